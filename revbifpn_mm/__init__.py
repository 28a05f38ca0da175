"""revbifpn_mm: the reversible RevBiFPN backbone for MMDetection 3.x and MMSegmentation 1.x.

``import revbifpn_mm`` needs only torch (>= 2.5, checked here with a clear error). When
mmengine and mmcv are both installed, the mm layer (registration of ``RevBiFPN`` and
``RevBiFPNNeck``) is imported too, so ``custom_imports=dict(imports=['revbifpn_mm'])`` is
all a config needs. mmcv's compiled ops are not needed for that; the tools check them
before building a detector (:func:`revbifpn_mm.mm.check_mmcv_ops`). Should the installed
mm stack fail to import, ``import revbifpn_mm`` still succeeds, warns with the error,
and leaves the mm layer unregistered; ``import revbifpn_mm.mm`` raises that error.
"""
import importlib.util
import warnings

from ._compat_torch import check_torch_version

check_torch_version()

from .version import __version__  # noqa: E402
from .models import (RevBiFPN, revbifpn_s0, revbifpn_s1, revbifpn_s2, revbifpn_s3,  # noqa: E402
                     revbifpn_s4, revbifpn_s5, revbifpn_s6)

__all__ = ["__version__", "RevBiFPN", "revbifpn_s0", "revbifpn_s1", "revbifpn_s2", "revbifpn_s3",
           "revbifpn_s4", "revbifpn_s5", "revbifpn_s6"]


def _mm_stack_installed() -> bool:
    """Whether mmengine and mmcv are both installed (found, not imported)."""
    return all(importlib.util.find_spec(name) is not None for name in ("mmengine", "mmcv"))


if _mm_stack_installed():
    try:
        from . import mm  # noqa: F401  (registers the mm modules)
    except ImportError as _err:
        warnings.warn(f"revbifpn_mm: RevBiFPN / RevBiFPNNeck are not registered with mmengine because "
                      f"the mm layer failed to import: {_err}", stacklevel=2)
        del _err
