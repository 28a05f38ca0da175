"""The oldest PyTorch that revbifpn_mm runs on, checked once at ``import revbifpn_mm``.

The reversible backward relies on these APIs (the release that introduced each):

* ``torch.autograd.grad`` with ``torch.autograd.graph.GradientEdge`` *outputs*
  (:func:`revbifpn_mm.core.recompute` back-propagates from the edge of a recomputed output
  that its caller has already released): torch 2.5.
* ``torch.is_autocast_enabled(device_type)`` and ``torch.get_autocast_dtype(device_type)``
  (autocast replay in the backward): torch 2.4.

An older torch would fail deep inside the first backward pass; this check turns it
into one error at import that names the installed version and the fix.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["TORCH_FLOOR", "TORCH_FIX", "check_torch_version"]

#: The oldest supported torch release (major, minor).
TORCH_FLOOR: Tuple[int, int] = (2, 5)
TORCH_FIX = ("pip install 'torch>=2.5' (for a CUDA build, take the install command for your CUDA "
             "version from https://pytorch.org/get-started/locally/)")


def _major_minor(version: str) -> Optional[Tuple[int, int]]:
    """``(major, minor)`` of a torch version string such as ``'2.13.0+cpu'``; None if unparsable."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_torch_version(version: Optional[str] = None) -> None:
    """Raise an ImportError naming the fix if the installed torch is older than :data:`TORCH_FLOOR`.

    Args:
        version: The version string to check; defaults to ``torch.__version__``.
            An unparsable string (a custom build) is accepted.

    Raises:
        ImportError: The torch release is older than the floor.
    """
    if version is None:
        import torch
        version = torch.__version__
    parsed = _major_minor(version)
    if parsed is not None and parsed < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise ImportError(
            f"revbifpn_mm needs torch >= {floor}, but torch {version} is installed: the reversible "
            "backward uses torch.autograd.grad on gradient edges (torch 2.5) and the per-device "
            f"autocast queries (torch 2.4). Fix: {TORCH_FIX}")
