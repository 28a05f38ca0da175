"""The OpenMMLab layer: registers ``RevBiFPN``, ``RevBiFPNNeck``, ``SafeCheckpointHook`` and, with
MMSegmentation, ``LeanFCNHead`` in mmengine's root registries, which mmdet's and mmseg's resolve.

Only this sub-package imports mmengine and mmcv (``mmcv.cnn``, not the compiled ops: see
:func:`check_mmcv_ops`); mmseg only for the head, mmdet never. Importing it also allow-lists mmengine's
checkpoint types for torch's weights-only loader (:func:`ensure_torch_load_compat`). See docs/design.md.
"""
import importlib.util
import warnings

from .compat import MMCVOpsMissingError, check_mmcv_ops, ensure_torch_load_compat, require_mm_stack

require_mm_stack()
ensure_torch_load_compat()

from .backbone import RevBiFPNBackbone  # noqa: E402
from .hooks import SafeCheckpointHook  # noqa: E402
from .neck import RevBiFPNNeck  # noqa: E402

try:
    _MMSEG = importlib.util.find_spec("mmseg") is not None
except ValueError:  # a module that was imported without a spec, or blocked in sys.modules
    _MMSEG = False
if _MMSEG:
    try:
        from .decode_head import LeanFCNHead  # noqa: F401  (registers it)
    except ImportError as err:  # mmseg installed but broken (e.g. mmcv without its compiled ops)
        warnings.warn(f"mmseg is installed but does not import ({type(err).__name__}: {err}): LeanFCNHead is "
                      "not registered; fix the mmseg / mmcv install (tools/setup_env.sh) to use it", stacklevel=2)

__all__ = ["RevBiFPNBackbone", "RevBiFPNNeck", "SafeCheckpointHook", "MMCVOpsMissingError", "check_mmcv_ops",
           "ensure_torch_load_compat", "require_mm_stack"]
