"""Distributed training on CPU-only PyTorch through the mmengine Runner.

mmengine 0.10.7's ``pytorch`` launcher calls ``torch.cuda.set_device`` (which a CPU
build of torch does not have) and wraps the model with ``device_ids=[LOCAL_RANK]``
(which DDP rejects for CPU modules). :func:`prepare_cpu_distributed` initialises the
``gloo`` process group itself (mmengine then skips its own initialisation) and asks for
a DDP wrapper without ``device_ids``. On CUDA machines nothing changes.
"""
from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["prepare_cpu_distributed"]


def prepare_cpu_distributed(cfg: Any, launcher: str) -> bool:
    """Make ``cfg`` trainable with ``launcher='pytorch'`` on a machine without CUDA.

    Returns:
        True when the CPU path was set up (process group initialised with gloo).
    """
    if launcher != "pytorch" or torch.cuda.is_available():
        return False
    import torch.distributed as dist
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError("--launcher pytorch needs RANK/WORLD_SIZE: start it with torchrun "
                               "(bash tools/dist_train.sh CONFIG NPROC ...)")
        dist.init_process_group(backend="gloo")
    env_cfg = cfg.setdefault("env_cfg", {})
    env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper["device_ids"] = None  # CPU module: DDP takes no device ids
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    cfg.model_wrapper_cfg = wrapper
    return True
