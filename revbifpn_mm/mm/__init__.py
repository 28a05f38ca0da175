"""The OpenMMLab layer: registers ``RevBiFPN`` (backbone), ``RevBiFPNNeck`` and ``LeanFCNHead``
(segmentation decode head) in mmengine's root ``MODELS`` registry, which both
``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` resolve.

Only this sub-package imports mmengine and mmcv; mmdet is never imported here, and mmseg
only when a ``LeanFCNHead`` is built.
It needs mmengine and ``mmcv.cnn`` (an ImportError names the fix otherwise), not mmcv's
compiled ops: :func:`check_mmcv_ops` checks those where they are used (the tools call it
before building a detector). Importing it also allow-lists mmengine's checkpoint types
for torch's weights-only loader (:func:`ensure_torch_load_compat`), which ``resume``,
``load_from`` and the inferencers of mmdet / mmseg rely on.
"""
from .compat import MMCVOpsMissingError, check_mmcv_ops, ensure_torch_load_compat, require_mm_stack

require_mm_stack()
ensure_torch_load_compat()

from .backbone import RevBiFPNBackbone  # noqa: E402
from .neck import RevBiFPNNeck  # noqa: E402
from .lean_fcn import build_lean_fcn_head  # noqa: E402,F401  (registers LeanFCNHead; imports mmseg on first build)

__all__ = ["RevBiFPNBackbone", "RevBiFPNNeck", "MMCVOpsMissingError", "check_mmcv_ops",
           "ensure_torch_load_compat", "require_mm_stack"]
