"""Meters of a training step for the tools: peak memory (:class:`PeakProbe`: CUDA's allocator or, on Linux
CPUs, the process's peak resident set), the fresh process a resident-set peak is read in (:func:`run_fresh`),
and the aten ops a piece of code dispatches (:class:`KernelCounter`). The bytes autograd saves for backward
are the package's (:class:`revbifpn_mm.core.SavedTensorCounter`). Nothing here runs at import.
"""
from __future__ import annotations

import collections
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["PeakProbe", "CudaPeakProbe", "RssPeakProbe", "peak_probe_for", "NoPeak", "FreshProcessKilled",
           "run_fresh", "KernelCounter", "VIEW_OPS"]

TOOLS = os.path.dirname(os.path.abspath(__file__))


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

    The CPU counterpart of :class:`CudaPeakProbe` (Linux with glibc). On construction glibc is told to
    serve every allocation above ``mmap_threshold`` bytes by ``mmap``, so that a freed tensor leaves the
    resident set at once. The setting holds for the rest of the process and slows allocation-heavy steps
    by 20-40 %: take step times in a process without this probe. Small inputs under-read (their tensors
    fall below the threshold or into resident pages); read it at detection-sized inputs.

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
        try:
            ctypes.CDLL("libc.so.6")
        except OSError:
            return False
        return os.access("/proc/self/clear_refs", os.W_OK)

    def reset(self) -> None:
        self._base = _status_bytes("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS

    def read(self) -> int:
        return _status_bytes("VmHWM:") - self._base


def peak_probe_for(device: torch.device) -> Optional[PeakProbe]:
    """The peak probe for ``device``: CUDA's allocator, else the resident set where readable.

    On CPU this changes glibc's allocation policy for the whole process (see :class:`RssPeakProbe`).

    Returns:
        The probe, or ``None`` where none is available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return CudaPeakProbe(device)
    if device.type == "cpu" and RssPeakProbe.available():
        return RssPeakProbe()
    return None


class NoPeak(PeakProbe):
    """Stands in for a peak probe where only time is measured: reads 0."""

    def reset(self) -> None:  # noqa: D102
        pass

    def read(self) -> int:  # noqa: D102
        return 0


# --------------------------------------------------------------------------- fresh process
class FreshProcessKilled(RuntimeError):
    """The measuring process was killed by a signal (usually for lack of memory)."""


def run_fresh(module: str, args: Sequence[str], timeout: Optional[float] = None,
              env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run ``python -m module *args OUT`` in a fresh process with tools/ importable; return the JSON it wrote to OUT.

    The module's entry takes the path of its result file as its last argument and writes one JSON
    object there (errors included, as it sees fit).

    Raises:
        FreshProcessKilled: the process was killed by a signal and wrote nothing.
        RuntimeError: it failed otherwise and wrote nothing (the message holds its output's tail).
    """
    path = os.pathsep.join(p for p in (TOOLS, os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {}), "PYTHONPATH": path}
    with tempfile.TemporaryDirectory(prefix="revbifpn_fresh_") as tmp:
        out = os.path.join(tmp, "result.json")
        proc = subprocess.run([sys.executable, "-m", module, *map(str, args), out],
                              capture_output=True, text=True, env=full_env, timeout=timeout)
        if not os.path.isfile(out):
            if proc.returncode < 0 or proc.returncode == 137:
                raise FreshProcessKilled(f"the measuring process was killed (signal {-proc.returncode})")
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"the measuring process ({module}) failed:\n" + "\n".join(tail))
        with open(out, encoding="utf-8") as f:
            return json.load(f)


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
