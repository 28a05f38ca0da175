"""The oldest PyTorch that revbifpn_mm runs on, checked once at ``import revbifpn_mm``: an older torch fails
there, not deep inside the first backward pass (the error names the features it lacks)."""
from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["TORCH_FLOOR", "check_torch_version"]

#: The oldest supported torch release (major, minor).
TORCH_FLOOR: Tuple[int, int] = (2, 5)


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
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if match and (int(match.group(1)), int(match.group(2))) < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise ImportError(
            f"revbifpn_mm needs torch >= {floor}, but torch {version} is installed: the reversible "
            "backward uses torch.autograd.grad on gradient edges (torch 2.5) and the per-device "
            f"autocast queries (torch 2.4). Fix: pip install 'torch>={floor}' (for a CUDA build, take the "
            "install command for your CUDA version from https://pytorch.org/get-started/locally/)")
