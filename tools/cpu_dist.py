"""Distributed runs through the mmengine Runner: their start on CPU-only PyTorch, and their stop.

mmengine 0.10.7's ``pytorch`` launcher calls ``torch.cuda.set_device`` and wraps the model with
``device_ids=[LOCAL_RANK]`` (which DDP rejects for CPU modules), and mmdet/mmseg configs ask for ``nccl``:
:func:`prepare_cpu_distributed` works around all three on a machine without CUDA.
"""
import gc
import os
from typing import Any

import torch

__all__ = ["prepare_cpu_distributed", "uses_sync_bn", "cpu_sync_bn_available", "native_threads", "shutdown_distributed"]

_SYNC_BN_TYPES = {"SyncBN", "MMSyncBN", "SyncBatchNorm"}


def uses_sync_bn(cfg: Any) -> bool:
    """Whether the config's model asks for synchronised BN (a ``SyncBN`` norm or ``sync_bn``)."""

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            typ = node.get("type")
            return (isinstance(typ, str) and typ in _SYNC_BN_TYPES) or any(walk(v) for v in node.values())
        return isinstance(node, (list, tuple)) and any(walk(v) for v in node)

    return bool(cfg.get("sync_bn")) or walk(cfg.get("model"))


def cpu_sync_bn_available() -> bool:
    """Whether this torch can run SyncBatchNorm's statistics kernel on CPU tensors."""
    try:
        torch.batch_norm_stats(torch.zeros(2, 1, 1, 1), 1e-5)
    except (NotImplementedError, RuntimeError):
        return False
    return True


def prepare_cpu_distributed(cfg: Any, launcher: str) -> bool:
    """Make ``cfg`` trainable with a distributed ``launcher`` on a machine without CUDA.

    Every launcher gets the ``gloo`` backend instead of mmdet/mmseg's default ``nccl``.
    With ``launcher='pytorch'`` the gloo process group is also initialised here and the
    DDP wrapper is configured without ``device_ids``.

    Returns:
        True when the config was changed.

    Raises:
        ValueError: The config uses SyncBN, which torch runs only on accelerators.
    """
    if launcher == "none" or torch.cuda.is_available():
        return False
    if uses_sync_bn(cfg) and not cpu_sync_bn_available():
        raise ValueError(
            "this config uses SyncBN (norm_cfg type='SyncBN' or sync_bn=...), which needs GPUs: "
            "torch's SyncBatchNorm has no CPU kernels and DDP refuses it in CPU modules. For "
            "distributed training on CPU set norm_cfg=dict(type='BN', eps=1e-3) (with "
            "norm_eval=True, the detection default, BN statistics need no synchronisation), or "
            "launch on CUDA devices")
    dist_cfg = cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})
    if launcher != "pytorch":
        if dist_cfg.get("backend", "nccl") != "nccl":
            return False
        dist_cfg["backend"] = "gloo"
        return True
    import torch.distributed as dist
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError("--launcher pytorch needs RANK/WORLD_SIZE: start it with torchrun "
                               "(bash tools/dist_train.sh CONFIG NPROC ...)")
        dist.init_process_group(backend="gloo")
    dist_cfg["backend"] = "gloo"
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper["device_ids"] = None  # CPU module: DDP takes no device ids
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    cfg.model_wrapper_cfg = wrapper
    return True


def native_threads(prefix: str) -> int:
    """How many threads of this process have a name starting with ``prefix`` (Linux; 0 elsewhere)."""
    try:
        names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    except OSError:
        return 0
    return sum(n.startswith(prefix) for n in names)


def shutdown_distributed(barrier: bool = True) -> int:
    """Destroy the default process group, if any, and with it gloo's threads, before the interpreter exits.

    A gloo worker thread that frees Python-owned tensors while the interpreter finalizes ends the process
    with ``std::terminate`` (exit -6 after a successful run: pytorch/pytorch#190489).
    ``destroy_process_group`` joins those threads only when nothing else holds the group: callers drop
    the runner and its DDP wrapper first, and this collects the garbage around it.

    Args:
        barrier: Wait for the other ranks first (not after an error, when they may never arrive).

    Returns:
        The gloo worker threads still alive afterwards (0 when the group is gone).
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
    return native_threads("pt_gloo")
