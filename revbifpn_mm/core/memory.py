"""What a training step costs: bytes saved for backward, peak memory, dispatched kernels.

* :class:`SavedTensorCounter` / :func:`saved_bytes`: the activation bytes autograd keeps for
  the backward pass (device-independent).
* :class:`PeakProbe`: the peak memory of a piece of code, from CUDA's allocator
  (:class:`CudaPeakProbe`) or, on Linux CPUs, from the process's peak resident set
  (:class:`RssPeakProbe`); the memory planner reads its measurements with these.
* :class:`KernelCounter`: the aten ops a piece of code dispatches, views and allocations
  excluded; on a GPU in the launch-bound regime a step's time follows this count.

Torch only; nothing here runs at import.
"""
from __future__ import annotations

import collections
import ctypes
import os
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SavedTensorCounter", "saved_bytes", "PeakProbe", "CudaPeakProbe", "RssPeakProbe", "peak_probe_for",
           "KernelCounter", "VIEW_OPS"]


class SavedTensorCounter:
    """Context manager that records every tensor saved for backward, deduplicated by storage.

    Parameters (or any tensors passed as ``exclude``) are not counted: they exist
    anyway and are not activation memory. Views of one storage count once, with the
    storage's full size.

    Example:
        >>> with SavedTensorCounter(exclude=model.parameters()) as c:
        ...     loss = model(x).sum()
        >>> c.nbytes  # activation bytes held for the backward pass
    """

    def __init__(self, exclude: Optional[Iterable[Tensor]] = None) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in (exclude or ())}
        self.storages: Dict[Tuple[str, int], int] = {}
        self._ctx: Any = None

    def _pack(self, t: Tensor) -> Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self._excluded and ptr != 0:
            self.storages[(str(t.device), ptr)] = st.nbytes()
        # A detached alias: the same storage and version counter, no grad_fn. Returning ``t`` itself
        # would tie a custom Function's saved outputs to their own node, a reference cycle through
        # C++ that no garbage collection frees (each counted forward of a reversible run followed by
        # plain segments kept its outputs alive until the process ended).
        return t.detach()

    @property
    def nbytes(self) -> int:
        """Total bytes of the distinct storages saved for backward."""
        return sum(self.storages.values())

    def __enter__(self) -> "SavedTensorCounter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def saved_bytes(fn: Callable[[], Any], exclude: Optional[Iterable[Tensor]] = None) -> int:
    """Run ``fn()`` and return the activation bytes it saved for backward."""
    with SavedTensorCounter(exclude) as c:
        out = fn()
    del out
    return c.nbytes


# --------------------------------------------------------------------------- peak probes
class PeakProbe:
    """Reads the peak memory of the code run between :meth:`reset` and :meth:`read`."""

    def reset(self) -> None:
        """Take the current level as the baseline and clear the recorded peak."""
        raise NotImplementedError

    def read(self) -> int:
        """Bytes of the peak since :meth:`reset`, above the baseline."""
        raise NotImplementedError


class CudaPeakProbe(PeakProbe):
    """``torch.cuda.max_memory_allocated`` since the reset, minus the memory allocated at it."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._base = 0

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        self._base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self._base


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{key} not in /proc/self/status")


class RssPeakProbe(PeakProbe):
    """Peak resident set (VmHWM) since the reset, minus the resident set (VmRSS) at it.

    The CPU counterpart of :class:`CudaPeakProbe` (Linux with glibc). On construction glibc
    is told to serve every allocation above ``mmap_threshold`` bytes by ``mmap``, so that a
    freed tensor leaves the resident set at once instead of staying in the heap. The setting
    holds for the rest of the process (glibc reuses freed heap chunks first, so it cannot be
    switched back) and slows allocation-heavy steps by 20-40 %: take step times in a process
    without this probe. The reading under-reads small inputs, whose tensors fall below the
    threshold or into already resident pages; read it at detection-sized inputs.

    Raises:
        RuntimeError: where ``/proc/self/clear_refs`` or glibc's ``mallopt`` is unavailable
            (see :meth:`available`).
    """

    def __init__(self, mmap_threshold: int = 64 * 1024) -> None:
        if not os.access("/proc/self/clear_refs", os.W_OK):
            raise RuntimeError("RssPeakProbe needs a writable /proc/self/clear_refs (Linux); "
                               "check RssPeakProbe.available() first")
        try:
            ok = ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
        except OSError as err:
            raise RuntimeError(f"RssPeakProbe needs glibc (libc.so.6): {err}") from err
        if not ok:
            raise RuntimeError(f"glibc rejected mallopt(M_MMAP_THRESHOLD, {mmap_threshold})")
        self._base = 0

    @staticmethod
    def available() -> bool:
        """Whether this process can read its peak resident set (Linux with glibc)."""
        if not os.access("/proc/self/clear_refs", os.W_OK):
            return False
        try:
            ctypes.CDLL("libc.so.6")
        except OSError:
            return False
        return True

    def reset(self) -> None:
        self._base = _status_bytes("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS

    def read(self) -> int:
        return _status_bytes("VmHWM:") - self._base


def peak_probe_for(device: torch.device) -> Optional[PeakProbe]:
    """The peak probe for ``device``: CUDA's allocator, else the resident set where readable.

    On CPU this changes glibc's allocation policy for the whole process (see
    :class:`RssPeakProbe`). Returns ``None`` where no probe is available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return CudaPeakProbe(device)
    if device.type == "cpu" and RssPeakProbe.available():
        return RssPeakProbe()
    return None


# --------------------------------------------------------------------------- kernel count
VIEW_OPS = frozenset({
    "alias", "as_strided", "chunk", "detach", "empty", "empty_like", "empty_strided", "expand",
    "lift_fresh", "narrow", "new_empty", "new_empty_strided", "permute", "_reshape_alias", "reshape",
    "select", "slice", "split", "split_with_sizes", "squeeze", "t", "transpose", "unbind",
    "unsqueeze", "_unsafe_view", "view"})
"""aten ops that only alias or allocate memory: no kernel runs, so they are not counted."""


class KernelCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the context, views and allocations excluded.

    Example:
        >>> with KernelCounter() as c:
        ...     y = torch.randn(4, 4).relu().t()
        >>> c.total  # randn and relu; the transpose is a view
        2
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.total += 1
            self.by_op[name] += 1
        return func(*args, **(kwargs or {}))
