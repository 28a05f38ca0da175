"""Peak working set of a piece of code on CPU (Linux + glibc), for benchmarks and memory tests.

The reading is the process's peak resident memory (``VmHWM`` of ``/proc/self/status``,
reset through ``/proc/self/clear_refs``) during the code, minus its resident memory
(``VmRSS``) just before. For freed tensors to leave the resident set at once, glibc is
told to serve every allocation above 64 KiB by ``mmap`` (``mallopt(M_MMAP_THRESHOLD)``):
:func:`enable_peak_rss` does that once per process, before the allocations it should
see, and the setting stays for the whole process (glibc serves later requests from freed
heap chunks first, so it cannot be switched back and forth). It slows allocation-heavy
code by 20-40 %.

The reading under-reads small working sets (allocations below the threshold and pages
already resident are not seen); read it at inputs whose working set is tens of MB or
more. Each reading is best taken in a fresh process: the allocator's state of earlier
work (cached pages, fragmentation) shifts it.

Only the standard library is used; nothing happens at import.

Example:
    >>> from revbifpn_mm.tooling.memory import enable_peak_rss, peak_rss_bytes
    >>> if enable_peak_rss():  # doctest: +SKIP
    ...     peak = peak_rss_bytes(lambda: model(x).sum().backward())
"""
from __future__ import annotations

import os
from typing import Any, Callable

__all__ = ["PEAK_MMAP_THRESHOLD", "peak_rss_supported", "enable_peak_rss", "vm_bytes", "peak_rss_bytes"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
#: Allocations above this size are served by mmap while the probe is enabled (bytes).
PEAK_MMAP_THRESHOLD = 64 * 1024
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"
_enabled = False


def _libc() -> Any:
    import ctypes
    return ctypes.CDLL("libc.so.6")


def peak_rss_supported() -> bool:
    """Whether this process can reset and read its peak resident memory (Linux ``/proc``)."""
    return os.path.isfile(_STATUS) and os.access(_CLEAR_REFS, os.W_OK)


def enable_peak_rss() -> bool:
    """Pin glibc's mmap threshold at :data:`PEAK_MMAP_THRESHOLD` so that peak readings are meaningful.

    Call it once, early (before the allocations to be measured). Idempotent.

    Returns:
        True when peak readings are available (Linux with glibc and a writable
        ``/proc/self/clear_refs``); False elsewhere, and nothing is changed.
    """
    global _enabled
    if _enabled:
        return True
    if not peak_rss_supported():
        return False
    try:
        ok = bool(_libc().mallopt(_M_MMAP_THRESHOLD, PEAK_MMAP_THRESHOLD))  # fixed: no dynamic growth
    except (OSError, AttributeError):  # no glibc (e.g. musl)
        return False
    _enabled = ok
    return ok


def vm_bytes(key: str) -> int:
    """A memory figure of ``/proc/self/status`` in bytes, e.g. ``vm_bytes('VmRSS')``.

    Raises:
        KeyError: The status file has no such line.
    """
    key = key.rstrip(":") + ":"
    with open(_STATUS, encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{key} not in {_STATUS}")


def peak_rss_bytes(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` and return its peak working set: peak resident memory during it minus before it.

    Raises:
        RuntimeError: :func:`enable_peak_rss` has not succeeded in this process (the
            reading would miss freed-and-reused memory and mean little).
    """
    if not _enabled:
        raise RuntimeError("peak_rss_bytes needs enable_peak_rss() to have returned True in this process "
                           "(Linux with glibc); call it once before the allocations to be measured")
    base = vm_bytes("VmRSS")
    with open(_CLEAR_REFS, "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current RSS
    fn()
    return vm_bytes("VmHWM") - base
