"""revbifpn_mm: the reversible RevBiFPN backbone for MMDetection 3.x and MMSegmentation 1.x.

``import revbifpn_mm`` needs only torch. When mmengine is installed, the mm layer
(registration of ``RevBiFPN`` and ``RevBiFPNNeck``) is imported too, so
``custom_imports=dict(imports=['revbifpn_mm'])`` is all a config needs.
"""
import importlib.util

from .version import __version__
from .models import RevBiFPN, revbifpn_s0, revbifpn_s1, revbifpn_s2, revbifpn_s3, revbifpn_s4, revbifpn_s5, revbifpn_s6

__all__ = ["__version__", "RevBiFPN", "revbifpn_s0", "revbifpn_s1", "revbifpn_s2", "revbifpn_s3",
           "revbifpn_s4", "revbifpn_s5", "revbifpn_s6"]

if importlib.util.find_spec("mmengine") is not None and importlib.util.find_spec("revbifpn_mm.mm") is not None:
    from . import mm  # noqa: F401  (registers the mm modules; real import errors surface)
