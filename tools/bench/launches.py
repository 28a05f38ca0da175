"""Kernels launched per training step, counted with ``torch.profiler`` (eager and compiled alike).

A ``TorchDispatchMode`` counter cannot count compiled code: under an active dispatch mode the compiled
frames do not run as compiled. The profiler sees what actually ran. What is counted:

* on CUDA: every GPU kernel the step launched (profiler device events);
* on CPU: every *outermost* operator call (an ``aten::`` / ``mkldnn::`` / ... op not nested inside another
  counted one, views and allocations excluded as :data:`VIEW_OPS`) plus every compiled C++ kernel
  (inductor's ``cpp_fused_*``, profiled with ``torch._inductor.config.cpp.enable_kernel_profile``).
  An eager step and a compiled one are counted by the same rule: a convolution is one, a fused
  BN + Hardswish kernel is one where eager counts the BN and the Hardswish.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from meters import VIEW_OPS

from .measure import training_loss

__all__ = ["enable_kernel_profile", "count_launches", "step_launches"]

_OP = re.compile(r"^(?!autograd::|torch::)\w+::(\w+)")


def _is_counted(name: str) -> bool:
    if "cpp_fused" in name or name.startswith("triton_"):
        return True
    m = _OP.match(name)
    return m is not None and m.group(1) not in VIEW_OPS


def enable_kernel_profile() -> None:
    """Make inductor's C++ kernels visible to the profiler: call before anything compiles (the setting is
    read when a graph is compiled, so graphs compiled earlier stay invisible)."""
    try:
        import torch._inductor.config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True
    except ImportError:  # pragma: no cover - torch without inductor
        pass


def count_launches(run: Callable[[], Any], names: Optional[Counter] = None) -> int:
    """Kernels launched by ``run()`` (see the module docstring for the rule), each counted in ``names`` by
    its operator or kernel name when given."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.events()
    device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if device:
        if names is not None:
            names.update(e.name for e in device)
        return len(device)
    total = 0
    for e in events:
        if not _is_counted(e.name):
            continue
        parent = e.cpu_parent
        while parent is not None and not _is_counted(parent.name):
            parent = parent.cpu_parent
        if parent is None:
            total += 1
            if names is not None:
                names[e.name] += 1
    return total


def step_launches(forward: Callable[[], Any], names: Optional[Counter] = None) -> Tuple[int, int]:
    """Kernels launched by ``forward()`` and by the backward of its :func:`training_loss` (by name in
    ``names`` when given)."""
    box = {}

    def fwd() -> None:
        box["loss"] = training_loss(forward())

    n_fwd = count_launches(fwd, names)
    n_bwd = count_launches(lambda: box.pop("loss").backward(), names)
    return n_fwd, n_bwd
