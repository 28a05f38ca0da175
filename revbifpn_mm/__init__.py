"""revbifpn_mm: the reversible RevBiFPN backbone for MMDetection 3.x and MMSegmentation 1.x.

Needs only torch (>= 2.5, checked here). With mmengine and mmcv installed the mm layer registers too, so
``custom_imports=dict(imports=['revbifpn_mm'])`` is all a config needs; if it fails to import, this warns
with the error and leaves it unregistered (docs/design.md, "Safety rails").
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

if all(importlib.util.find_spec(name) is not None for name in ("mmengine", "mmcv")):  # found, not imported
    try:
        from . import mm  # noqa: F401  (registers the mm modules)
    except ImportError as _err:
        warnings.warn(f"revbifpn_mm: RevBiFPN / RevBiFPNNeck are not registered with mmengine because "
                      f"the mm layer failed to import: {_err}", stacklevel=2)
