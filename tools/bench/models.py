"""What the benchmark builds: RevBiFPN backbones, the baselines users would pick instead, whole detectors
and segmentors from the configs users train (this project's, mmdet's, mmseg's), each with a ``run()`` that
computes its training loss on synthetic inputs; :func:`torch_backbone_neck` builds torch-only stand-ins.
"""
from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from revbifpn_mm.models import RevBiFPN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Backbones of the detector comparisons (``'revbifpn_s3'``, HRNetV2p, ResNet-FPN).
DETECTORS = ("revbifpn_s3", "revbifpn_s6", "hrnetv2p_w18", "hrnetv2p_w32", "r50_fpn", "r101_fpn")
#: Backbones of the segmentation comparisons.
SEGMENTORS = ("revbifpn_s2", "revbifpn_s4", "revbifpn_s6", "hrnet_w18", "hrnet_w48")


def freeze_bn(model: nn.Module, frozen: bool) -> nn.Module:
    """Training mode; with ``frozen`` every BatchNorm uses its running statistics (``norm_eval``)."""
    model.train()
    if frozen:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def config(package: str, rel: str) -> Any:
    """A config shipped with mmdet / mmseg (``<package>/.mim/configs/<rel>``) or this checkout (``'repo'``)."""
    from mmengine.config import Config
    root = REPO if package == "repo" else os.path.join(os.path.dirname(importlib.import_module(package).__file__),
                                                       ".mim", "configs")
    return Config.fromfile(os.path.join(root, rel))


def build(cfg: Any, scope: str) -> nn.Module:
    """Build a model config in mmdet's or mmseg's registry and scope."""
    from mmengine.registry import DefaultScope
    importlib.import_module(f"{scope}.utils").register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        return importlib.import_module(f"{scope}.registry").MODELS.build(cfg)


def detector_cfg(kind: str, backbone: str, with_cp: bool = False, **revbifpn: Any) -> Any:
    """The ``model`` config of a ``'faster'`` or ``'mask'`` R-CNN without pretrained weights: this project's
    config for RevBiFPN (``revbifpn``: backbone options, e.g. ``plain_segments=2``), mmdet's 1x COCO configs
    for HRNetV2p and ResNet-FPN (``with_cp`` set)."""
    if kind not in ("faster", "mask"):
        raise ValueError(f"detector kind must be 'faster' or 'mask', got {kind!r}")
    stem, dashed = f"{kind}_rcnn", f"{kind}-rcnn"
    if backbone.startswith("revbifpn_"):
        if with_cp:
            raise ValueError("RevBiFPN has no with_cp: its trunk is reversible already")
        cfg = config("repo", f"configs/{stem}_revbifpn_{backbone.split('_')[1]}.py")
        cfg.model.backbone.update(revbifpn)
    elif backbone.startswith("hrnetv2p_"):
        cfg = config("mmdet", f"hrnet/{dashed}_hrnetv2p-{backbone.split('_')[1]}-1x_coco.py")
    elif backbone in ("r50_fpn", "r101_fpn"):
        cfg = config("mmdet", f"{stem}/{dashed}_{backbone[:-4]}_fpn_1x_coco.py")
    else:
        raise ValueError(f"unknown detector backbone {backbone!r}; one of {DETECTORS}")
    model = cfg.model
    model.backbone.init_cfg = None
    model.pop("pretrained", None)
    if with_cp:
        model.backbone.with_cp = True
    return model


def detector(kind: str, backbone: str, with_cp: bool = False, **revbifpn: Any) -> nn.Module:
    """A detector (see :func:`detector_cfg`), built in mmdet's scope."""
    return build(detector_cfg(kind, backbone, with_cp, **revbifpn), "mmdet")


def detector_run(model: nn.Module, batch: int, h: int, w: int, device: torch.device) -> Callable[[], Any]:
    """``run()`` computing the detector's loss dict on ``batch`` synthetic images with 5 boxes each."""
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(batch, [[3, h, w]] * batch, num_items=[5] * batch,
                            with_mask=bool(getattr(model, "with_mask", False)))
    data = model.data_preprocessor(packed, True)
    inputs, samples = data["inputs"].to(device), [s.to(device) for s in data["data_samples"]]
    return lambda: model.loss(inputs, samples)


def backbone_neck(backbone: str, with_cp: bool = False, **revbifpn: Any) -> nn.Module:
    """Backbone + neck of the Faster R-CNN config of ``backbone`` (RevBiFPNNeck, HRFPN or FPN)."""
    det = detector("faster", backbone, with_cp, **revbifpn)
    return nn.Sequential(det.backbone, det.neck)


def segmentor(backbone: str, head: str = "fcn", bn: str = "train", with_cp: bool = False) -> nn.Module:
    """An mmseg ``EncoderDecoder``, SyncBN made BN (one device): a Cityscapes FCN segmentor without pretrained
    weights, this project's ``configs/mmseg`` for RevBiFPN, mmseg's ``fcn_hr{18,48}`` for HRNetV2. ``head``:
    ``'fcn'`` (FCNHead) or ``'lean'`` (LeanFCNHead, same outputs); ``bn``: ``'train'`` or ``'frozen'``."""
    from mmengine.model import revert_sync_batchnorm
    if backbone.startswith("revbifpn_"):
        if with_cp:
            raise ValueError("RevBiFPN has no with_cp: its trunk is reversible already")
        cfg = config("repo", f"configs/mmseg/fcn_revbifpn_{backbone.split('_')[1]}_4xb2-40k_cityscapes-512x1024.py")
    elif backbone in ("hrnet_w18", "hrnet_w48"):
        cfg = config("mmseg", f"hrnet/fcn_hr{backbone.split('_w')[1]}_4xb2-40k_cityscapes-512x1024.py")
        cfg.model.backbone.with_cp = with_cp
    else:
        raise ValueError(f"unknown segmentation backbone {backbone!r}; one of {SEGMENTORS}")
    model = cfg.model
    model.pretrained = None
    model.backbone.init_cfg = None
    model.decode_head.type = {"fcn": "FCNHead", "lean": "LeanFCNHead"}[head]  # mmseg's; this project's
    model.backbone.norm_eval = bn == "frozen"
    return revert_sync_batchnorm(build(model, "mmseg"))


def segmentor_run(model: nn.Module, batch: int, h: int, w: int, device: torch.device) -> Callable[[], Any]:
    """``run()`` computing the segmentor's loss dict on ``batch`` random images and label maps (19 classes)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 3, h, w, generator=g).to(device)
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, h, w), generator=g).to(device))
        samples.append(s)
    return lambda: model.loss(inputs, samples)


# --------------------------------------------------------------------------- torch only (bare CUDA machines)
class HRFPNLike(nn.Module):
    """mmdet's ``HRFPN`` in plain torch: upsample every level to the first, concatenate, 1x1 conv,
    average-pool into ``num_outs`` levels, one 3x3 conv each (no norm, as HRFPN's default)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(sum(in_channels), out_channels, 1)
        self.convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(num_outs))

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:  # noqa: D102
        size = feats[0].shape[2:]
        x = self.reduction(torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear") for f in feats[1:]], 1))
        return [conv(x if i == 0 else F.avg_pool2d(x, 2 ** i)) for i, conv in enumerate(self.convs)]


def revbifpn(arch: str, **options: Any) -> RevBiFPN:
    """``RevBiFPN(arch, num_classes=0)`` with ``options``: constructor keys, and the run policy's
    experiment fields (``plain_from``, ``lean_recompute``, ...) applied with ``set_policy``."""
    keys = inspect.signature(RevBiFPN.__init__).parameters
    ctor = {k: v for k, v in options.items() if k in keys}
    model = RevBiFPN(arch, num_classes=0, **ctor)
    policy = {k: v for k, v in options.items() if k not in ctor}
    if policy:
        model.set_policy(**policy)
    return model


def torch_backbone_neck(name: str, with_cp: bool = False, **revbifpn_options: Any) -> nn.Module:
    """Backbone + HRFPN-equivalent neck without the mm stack: ``revbifpn_s#`` (with :func:`revbifpn` options)
    or timm's ``hrnet_w18`` / ``hrnet_w32`` / ``resnet50`` / ``resnet101`` (``with_cp``: timm's
    gradient checkpointing)."""
    if name.startswith("revbifpn_"):
        body = revbifpn(name.split("_")[1], **revbifpn_options)
        channels = list(body.out_channels)
    else:
        import timm
        body = timm.create_model(name, features_only=True, pretrained=False, out_indices=(1, 2, 3, 4),
                                 **(dict(feature_location="") if name.startswith("hrnet") else {}))
        if with_cp:
            body.set_grad_checkpointing(True)
        channels = body.feature_info.channels()
    return nn.Sequential(body, HRFPNLike(channels))


def backbone_neck_any(name: str, with_cp: bool = False, **revbifpn: Any) -> nn.Module:
    """:func:`backbone_neck` where the mm stack imports (the configs users train), else :func:`torch_backbone_neck`."""
    try:
        import revbifpn_mm.mm  # noqa: F401
        import mmdet  # noqa: F401
    except ImportError:
        timm_name = {"hrnetv2p_w18": "hrnet_w18", "hrnetv2p_w32": "hrnet_w32", "r50_fpn": "resnet50",
                     "r101_fpn": "resnet101"}.get(name, name)
        return torch_backbone_neck(timm_name, with_cp, **revbifpn)
    return backbone_neck(name, with_cp, **revbifpn)


def have_mm() -> bool:
    """Whether the mm layer, mmdet and mmseg import (with mmcv's ops)."""
    try:
        import mmseg  # noqa: F401

        from revbifpn_mm.mm import check_mmcv_ops
        check_mmcv_ops()
        return True
    except ImportError:
        return False


def image(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """A fixed random image batch."""
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)


Builder = Callable[[], Tuple[nn.Module, Callable[[], Any]]]


def builder(make: Callable[[], nn.Module], batch: int, h: int, w: int, device: torch.device,
            frozen_bn: bool = True, run: Optional[Callable[..., Callable[[], Any]]] = None) -> Builder:
    """A builder of ``(model, run)``: by default the module fed one image batch (backbones, backbone + neck);
    for a detector or segmentor ``run(model, batch, h, w, device)`` (e.g. :func:`detector_run`)."""
    def make_case() -> Tuple[nn.Module, Callable[[], Any]]:
        torch.manual_seed(0)
        model = freeze_bn(make().to(device), frozen_bn)
        if run is not None:
            return model, run(model, batch, h, w, device)
        x = image(batch, h, w, device)
        return model, (lambda: model(x))
    return make_case


def parse_size(text: str, n: int = 2) -> Tuple[int, ...]:
    """``'800x1344'`` -> ``(800, 1344)``; with ``n=3`` a batch first, ``'1x800x1344'`` -> ``(1, 800, 1344)``."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != n:
        raise ValueError(f"{'BxHxW, e.g. 1x800x1344' if n == 3 else 'sizes are HxW, e.g. 512x1024'}; got {text!r}")
    return dims
