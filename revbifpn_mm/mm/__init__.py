"""The OpenMMLab layer: registers ``RevBiFPN`` (backbone) and ``RevBiFPNNeck`` in mmengine's root
``MODELS`` registry, which both ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` resolve.

Only this sub-package imports mmengine and mmcv; mmdet and mmseg are never imported here.
"""
from .compat import check_mmcv_ops, ensure_torch_load_compat

check_mmcv_ops()
ensure_torch_load_compat()

from .backbone import RevBiFPNBackbone  # noqa: E402
from .neck import RevBiFPNNeck  # noqa: E402

__all__ = ["RevBiFPNBackbone", "RevBiFPNNeck", "check_mmcv_ops", "ensure_torch_load_compat"]
