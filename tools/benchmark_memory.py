"""Training memory, step time and kernel count: RevBiFPN against HRNet and ResNet.

Suites (``--suite``):
  * ``backbones`` (default): RevBiFPN S0-S6 backbones, reversible and plain (float64 and
    float32 residual streams, ``lean_recompute`` variants), alone and with the RevBiFPNNeck /
    HRFPN adapters; HRNetV2p W18/W32/W48 and ResNet-50/101 (mmdet's, else timm's); a few
    Faster / Mask R-CNN detectors; a depth sweep of the S0 width with 2-16 extension layers.
    Each row is measured on its own: memory first, then ``--steps`` timed steps.
  * ``fair-fight``: whole Faster / Mask R-CNN detectors as users would train them:
    RevBiFPN S3 / S6 (this project's configs) against HRNetV2p-W18/W32 and ResNet-50/101-FPN
    (mmdet's 1x configs), the baselines with and without ``with_cp=True``; backbone + neck
    rows of the same models (``--amp fp32,bf16`` adds bf16 autocast rows); the papers' and
    mmdet's COCO APs next to the measured figures.
  * ``seg``: whole segmentors (backbone + decode head + loss), batch 1, at 512x1024 and
    1024x2048: RevBiFPN S2/S4/S6 against HRNetV2-W18/W48 FCN (mmseg's Cityscapes configs),
    HRNet also with ``with_cp=True``; BN training as the configs train it (SyncBN becomes
    BN on one device) and frozen (``norm_eval=True``).
  * ``kernels``: aten kernels dispatched per training step of RevBiFPN backbones, reversible
    vs plain, frozen vs training BN (128x128, batch 2).

Passes of ``fair-fight`` and ``seg`` (``--pass``):
  * ``peak``: each model built, warmed up, measured and freed in turn, with the peak probe:
    peak memory of one step, bytes saved for backward, kernels per step;
  * ``time``: all models built first, warmed up, then stepped in turn for ``--rounds``
    rounds without the probe; the minimum per model;
  * ``all`` (default): ``time``, then ``peak`` in the same process.
  Each pass writes ``<out>/<pass>.json`` (keeping the rows of other models from earlier runs,
  so a pass can run in parts, e.g. one ``--amp`` at a time); the report merges both files;
  ``--pass report`` only rewrites it.

Figures (per sample = divided by the batch, mmdet's convention):
  * peak: on CUDA ``max_memory_allocated`` during one training step minus the memory
    allocated before it (parameters and gradients already allocated); on Linux CPUs the peak
    resident set of one step minus the resident set before it, with glibc told to return
    every freed allocation above 64 KiB at once (``revbifpn_mm.core.memory.RssPeakProbe``).
    The CPU reading tracks the CUDA one at detection-sized inputs (S3 at 800x1344:
    0.712 vs 0.710 GB/sample) and under-reads small ones. Its glibc setting lasts for the
    whole process and slows CPU steps by 20-40 %: ``--no-peak`` leaves glibc alone.
  * saved: bytes autograd saves for backward during the forward, deduplicated by storage,
    parameters excluded (any device).
  * kernels: aten ops dispatched by the forward + backward of one step after warm-up, views
    and allocations excluded (``revbifpn_mm.core.memory.KernelCounter``). It does not
    depend on the device; ``--no-kernels`` skips it (one extra step per row).
  * step time: wall time of forward + backward (loss: the sum of the model's losses, or of
    mean(f^2) over backbone outputs).

Writes ``<out>/benchmark.json``, ``<out>/benchmark.md`` and ``<out>/benchmark.png``.

Examples:
    python tools/benchmark_memory.py --quick                  # a few minutes on 2 CPU cores
    python tools/benchmark_memory.py --device cuda --amp fp32,bf16
    python tools/benchmark_memory.py --suite fair-fight --pass time --out work_dirs/ff
    python tools/benchmark_memory.py --suite fair-fight --pass peak --out work_dirs/ff
    python tools/benchmark_memory.py --suite seg --seg-sizes 512x1024 --out work_dirs/seg
    python tools/benchmark_memory.py --suite kernels --archs s0,s3
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from revbifpn_mm.models import ARCH_SETTINGS, RevBiFPN
from bench.measure import Case, count_step_kernels, measure_case, merge_rows, peak_pass, time_pass, training_loss
from revbifpn_mm.core.memory import peak_probe_for
from fidelity import set_bn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1e9


def log(msg: str) -> None:
    logging.getLogger("benchmark").info(msg)


# =========================================================================== building
def build_revbifpn(arch: str, mode: str, neck: Optional[str], ext: Optional[int] = None,
                   stream: str = "float64", lean: str = "neck", fold: Union[bool, str] = "auto") -> nn.Module:
    """A RevBiFPN backbone (with a neck from mmdet's registry when ``neck`` is given)."""
    body = RevBiFPN(arch, num_classes=0, num_ext_layers=ext, memory_mode=mode, stream_dtype=stream,
                    lean_recompute=lean, fold_frozen_bn=fold)
    if neck is None:
        return body
    from mmdet.registry import MODELS
    n = MODELS.build(dict(type=neck, in_channels=list(body.out_channels), out_channels=256))
    return nn.Sequential(body, n)


def build_baseline(name: str) -> Tuple[Optional[nn.Module], Optional[str]]:
    """mmdet backbone where available, else timm (features_only), else ``(None, None)``."""
    try:
        from mmdet.registry import MODELS
        if name.startswith("hrnet"):
            w = int(name[len("hrnet_w"):])
            extra = dict(
                stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(4,), num_channels=(64,)),
                stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(4, 4), num_channels=(w, 2 * w)),
                stage3=dict(num_modules=4, num_branches=3, block="BASIC", num_blocks=(4, 4, 4),
                            num_channels=(w, 2 * w, 4 * w)),
                stage4=dict(num_modules=3, num_branches=4, block="BASIC", num_blocks=(4, 4, 4, 4),
                            num_channels=(w, 2 * w, 4 * w, 8 * w)))
            return MODELS.build(dict(type="HRNet", extra=extra)), "mmdet"
        depth = int(name[len("resnet"):])
        return MODELS.build(dict(type="ResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3),
                                 frozen_stages=-1, norm_eval=False)), "mmdet"
    except ImportError:
        pass
    try:
        import timm
        kw = dict(feature_location="") if name.startswith("hrnet") else {}
        return timm.create_model(name, features_only=True, pretrained=False, **kw), "timm"
    except ImportError:
        return None, None


def _mim_cfg(package: str, rel: str):
    """A config shipped with mmdet / mmseg (``<package>/.mim/configs/<rel>``)."""
    import importlib

    from mmengine.config import Config
    pkg = importlib.import_module(package)
    return Config.fromfile(os.path.join(os.path.dirname(pkg.__file__), ".mim", "configs", rel))


DETECTOR_BACKBONES = ("revbifpn_s3", "revbifpn_s6", "hrnetv2p_w18", "hrnetv2p_w32", "r50_fpn", "r101_fpn")


def detector_model_cfg(kind: str, backbone: str, with_cp: bool = False, lean: Optional[str] = None,
                       fold: Optional[bool] = None):
    """The ``model`` config of a Faster / Mask R-CNN, without pretrained weights.

    RevBiFPN: this project's ``configs/{kind}_rcnn_revbifpn_{arch}.py``; HRNetV2p and
    ResNet-FPN: mmdet's 1x COCO configs. ``with_cp`` sets the baseline backbone's
    ``with_cp`` (checkpointing inside its blocks); ``lean`` RevBiFPN's ``lean_recompute``;
    ``fold`` RevBiFPN's ``fold_frozen_bn`` (``None``: the config's default).
    """
    if kind not in ("faster", "mask"):
        raise ValueError(f"detector kind must be 'faster' or 'mask', got {kind!r}")
    if backbone.startswith("revbifpn_"):
        from mmengine.config import Config
        if with_cp:
            raise ValueError("RevBiFPN has no with_cp: its trunk is reversible already")
        arch = backbone.split("_")[1]
        cfg = Config.fromfile(os.path.join(REPO, "configs", f"{kind}_rcnn_revbifpn_{arch}.py"))
        if lean is not None:
            cfg.model.backbone.lean_recompute = lean
        if fold is not None:
            cfg.model.backbone.fold_frozen_bn = fold
    elif backbone.startswith("hrnetv2p_"):
        cfg = _mim_cfg("mmdet", f"hrnet/{kind}-rcnn_hrnetv2p-{backbone.split('_')[1]}-1x_coco.py")
    elif backbone in ("r50_fpn", "r101_fpn"):
        cfg = _mim_cfg("mmdet", f"{kind}_rcnn/{kind}-rcnn_{backbone[:-4]}_fpn_1x_coco.py")
    else:
        raise ValueError(f"unknown detector backbone {backbone!r}; one of {DETECTOR_BACKBONES}")
    model = cfg.model
    model.backbone.init_cfg = None
    model.pop("pretrained", None)
    if with_cp:
        model.backbone.with_cp = True
    return model


def build_detector(kind: str, backbone: str, with_cp: bool = False, lean: Optional[str] = None,
                   fold: Optional[bool] = None) -> nn.Module:
    """A Faster / Mask R-CNN (see :func:`detector_model_cfg`), built in mmdet's registry scope."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(detector_model_cfg(kind, backbone, with_cp, lean, fold))


def detector_runner(model: nn.Module, batch: int, h: int, w: int, device: torch.device,
                    with_mask: bool) -> Callable[[], Any]:
    """``run()`` computing the detector's loss dict on ``batch`` synthetic images with 5 boxes each."""
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(batch, [[3, h, w]] * batch, num_items=[5] * batch, with_mask=with_mask)
    data = model.data_preprocessor(packed, True)
    inputs = data["inputs"].to(device)
    samples = [s.to(device) for s in data["data_samples"]]
    return lambda: model.loss(inputs, samples)


SEG_BACKBONES = ("revbifpn_s2", "revbifpn_s4", "revbifpn_s6", "hrnet_w18", "hrnet_w48")
_SEG_HRNET_CFG = "hrnet/fcn_hr{w}_4xb2-40k_cityscapes-512x1024.py"
_SEG_REVBIFPN_CFG = "configs/mmseg/fcn_revbifpn_{arch}_4xb2-40k_cityscapes-512x1024.py"
SEG_HEADS = {"fcn": "FCNHead", "lean": "LeanFCNHead"}  # mmseg's; this project's (revbifpn_mm.mm)


def segmentor_model_cfg(backbone: str, head: str = "fcn", bn: str = "train", with_cp: bool = False):
    """The ``model`` config of an FCN segmentor for Cityscapes, without pretrained weights.

    RevBiFPN: this project's ``configs/mmseg/fcn_revbifpn_{arch}_4xb2-40k_cityscapes-512x1024.py``
    (mmseg's ``fcn_hr18`` Cityscapes config with the backbone swapped: SyncBN training,
    ``norm_eval=False``; the four outputs resized and concatenated, a 1x1 conv of their summed
    width); HRNetV2-W18/W48: mmseg's ``fcn_hr{18,48}`` Cityscapes configs. ``head``: ``'fcn'``
    (mmseg's FCNHead) or ``'lean'`` (this project's LeanFCNHead, same outputs); ``bn``:
    ``'train'`` as configured or ``'frozen'`` (backbone ``norm_eval=True``); ``with_cp``:
    HRNet's block checkpointing.
    """
    from mmengine.config import Config
    if bn not in ("train", "frozen"):
        raise ValueError(f"bn must be 'train' or 'frozen', got {bn!r}")
    if head not in SEG_HEADS:
        raise ValueError(f"head must be one of {sorted(SEG_HEADS)}, got {head!r}")
    if backbone.startswith("revbifpn_"):
        if with_cp:
            raise ValueError("RevBiFPN has no with_cp: its trunk is reversible already")
        arch = backbone.split("_")[1]
        path = os.path.join(REPO, _SEG_REVBIFPN_CFG.format(arch=arch))
        if os.path.exists(path):
            cfg = Config.fromfile(path)
        else:  # a checkout without configs/mmseg: the same swap, done here
            cfg = _mim_cfg("mmseg", _SEG_HRNET_CFG.format(w=18))
            in_channels = list(ARCH_SETTINGS[arch]["out_channels"])
            cfg.model.backbone = dict(type="RevBiFPN", arch=arch, out_indices=(0, 1, 2, 3), out_type="neck",
                                      norm_cfg=dict(type="SyncBN", eps=1e-3, requires_grad=True),
                                      norm_eval=False, drop_path_rate=0.0)
            cfg.model.decode_head.update(in_channels=in_channels, channels=sum(in_channels))
    elif backbone in ("hrnet_w18", "hrnet_w48"):
        cfg = _mim_cfg("mmseg", _SEG_HRNET_CFG.format(w=backbone.split("_w")[1]))
        if with_cp:
            cfg.model.backbone.with_cp = True
    else:
        raise ValueError(f"unknown segmentation backbone {backbone!r}; one of {SEG_BACKBONES}")
    model = cfg.model
    model.pretrained = None
    model.backbone.init_cfg = None
    model.decode_head.type = SEG_HEADS[head]
    if bn == "frozen":
        model.backbone.norm_eval = True
    return model


def build_segmentor(backbone: str, head: str = "fcn", bn: str = "train", with_cp: bool = False) -> nn.Module:
    """An mmseg ``EncoderDecoder`` (see :func:`segmentor_model_cfg`); SyncBN becomes BN (one device)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmseg"):
        return revert_sync_batchnorm(MODELS.build(segmentor_model_cfg(backbone, head, bn, with_cp)))


def segmentor_runner(model: nn.Module, batch: int, h: int, w: int, device: torch.device,
                     num_classes: int = 19) -> Callable[[], Any]:
    """``run()`` computing the segmentor's loss dict on ``batch`` random images and label maps."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 3, h, w, generator=g).to(device)
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=g).to(device))
        samples.append(s)
    return lambda: model.loss(inputs, samples)


# ---------------------------------------------------------------- suites (case lists)
def backbone_cases(args, x: torch.Tensor, have_mm: bool) -> List[Case]:
    B = x.shape[0]
    cases: List[Case] = []

    def add(name, group, make, amp, **info):
        def build(make=make):
            m = make().to(x.device)
            set_bn(m, frozen=args.bn == "frozen")  # frozen: as detection trains (norm_eval=True)
            return m, (lambda: m(x))
        cases.append(Case(name, group, build, amp, B, info))

    for amp in args.amps:
        for arch in args.archs:
            # frozen BN: the detection setting, streams as the model's default picks them (float32)
            main_stream = "auto" if args.bn == "frozen" else "float64"
            for mode in ("reversible", "plain"):
                add(f"revbifpn_{arch}_{mode}", "backbone",
                    lambda a=arch, md=mode: build_revbifpn(a, md, None, stream=main_stream),
                    amp, arch=arch, mode=mode)
                if args.fold != "auto" and args.bn == "frozen":  # the same rows without folding
                    add(f"revbifpn_{arch}_{mode}_nofold", "backbone-variant",
                        lambda a=arch, md=mode: build_revbifpn(a, md, None, stream=main_stream, fold=False),
                        amp, arch=arch, mode=mode, fold_frozen_bn=False)
            for stream in args.streams:
                if stream != "float64" and amp == "fp32":
                    add(_variant(arch, stream), "backbone-variant",
                        lambda a=arch, st=stream: build_revbifpn(a, "reversible", None, stream=st),
                        amp, arch=arch, mode="reversible", stream=stream)
                for lean in () if args.no_lean or amp != "fp32" else ("all", "none"):
                    add(_variant(arch, stream, lean), "backbone-variant",
                        lambda a=arch, st=stream, ln=lean: build_revbifpn(a, "reversible", None, stream=st, lean=ln),
                        amp, arch=arch, mode="reversible", stream=stream, lean=lean)
            if have_mm and not args.no_necks:
                for neck in ("RevBiFPNNeck", "HRFPN"):
                    add(f"revbifpn_{arch}_reversible+{neck}", "backbone+neck",
                        lambda a=arch, nk=neck: build_revbifpn(a, "reversible", nk), amp,
                        arch=arch, mode="reversible", neck=neck)
        for name in args.baselines:
            src = "mmdet" if have_mm else "timm"

            def make(name=name):
                m, _ = build_baseline(name)
                if m is None:
                    raise RuntimeError(f"{name}: neither mmdet nor timm installed")
                return m
            add(f"{src}_{name}", "baseline", make, amp)
    if have_mm and not args.no_detectors:
        h, w = x.shape[-2:]
        for kind in ("faster", "mask"):
            for bb, lean in (("revbifpn_s3", None),) + (() if args.no_lean else (("revbifpn_s3", "all"),)) + (
                    ("hrnetv2p_w18", None), ("r101_fpn", None)):
                cases.append(Case(f"{kind}_rcnn_{bb}" + ("_lean" if lean else ""), "detector",
                                  _detector_builder(kind, bb, False, lean, B, h, w, x.device), "fp32", B,
                                  dict(detector=kind, backbone=bb)))
    return cases


def sweep_cases(args, device: torch.device) -> List[Case]:
    sh, sw, sb = (128, 128, 1) if args.quick else (512, 512, 4 if device.type != "cpu" else 1)
    xs = torch.randn(sb, 3, sh, sw, device=device)
    cases = []
    for ext in (2, 4, 8, 16):
        for mode in ("reversible", "plain"):
            def build(ext=ext, mode=mode):
                m = build_revbifpn("s0", mode, None, ext).to(device).train()
                return m, (lambda: m(xs))
            cases.append(Case(f"sweep_s0_ext{ext}_{mode}", "depth_sweep", build, "fp32", sb,
                              dict(ext=ext, mode=mode, input=[sb, 3, sh, sw])))
    return cases


def _detector_builder(kind: str, bb: str, cp: bool, lean: Optional[str], batch: int, h: int, w: int,
                      device: torch.device, fold: Optional[bool] = None):
    def build():
        torch.manual_seed(0)
        model = build_detector(kind, bb, cp, lean, fold).to(device)
        model.train()
        return model, detector_runner(model, batch, h, w, device, kind == "mask")
    return build


def _neck_builder(kind: str, bb: str, cp: bool, batch: int, h: int, w: int, device: torch.device):
    def build():
        torch.manual_seed(0)
        det = build_detector(kind, bb, cp)
        model = nn.Sequential(det.backbone, det.neck).to(device)
        model.train()
        x = torch.randn(batch, 3, h, w, device=device)
        return model, (lambda: model(x))
    return build


def _cp_variants(bb: str, with_cp: str) -> Tuple[bool, ...]:
    if bb.startswith("revbifpn_"):
        return (False,)
    return {"both": (False, True), "on": (True,), "off": (False,)}[with_cp]


def fair_fight_cases(args, device: torch.device, batch: int, h: int, w: int) -> List[Case]:
    cases = []
    for amp in args.amps:
        for bb in args.ff_backbones:
            for cp in _cp_variants(bb, args.with_cp):
                label = bb + ("+cp" if cp else "")
                if not args.no_necks:
                    cases.append(Case(f"{label} backbone+neck", "backbone+neck",
                                      _neck_builder("faster", bb, cp, batch, h, w, device), amp, batch,
                                      dict(backbone=bb, with_cp=cp)))
                folds: Tuple[Optional[bool], ...] = (None,)
                if bb.startswith("revbifpn_") and args.fold != "auto":
                    folds = {"off": (False,), "both": (None, False)}[args.fold]
                for kind in args.detectors:
                    for fold in folds:
                        cases.append(Case(f"{kind}_rcnn {label}" + (" fold=off" if fold is False else ""),
                                          "detector",
                                          _detector_builder(kind, bb, cp, None, batch, h, w, device, fold),
                                          amp, batch, dict(detector=kind, backbone=bb, with_cp=cp,
                                                           fold_frozen_bn=fold if fold is not None else "auto")))
    return cases


def seg_cases(args, device: torch.device) -> List[Case]:
    cases = []
    for size in args.seg_sizes:
        h, w = size
        for bb in args.seg_backbones:
            heads = args.seg_heads if bb.startswith("revbifpn_") else ("fcn",)
            for cp in _cp_variants(bb, args.with_cp):
                for bn in args.seg_bn:
                    for head in heads:
                        def build(bb=bb, head=head, bn=bn, cp=cp, h=h, w=w):
                            torch.manual_seed(0)
                            model = build_segmentor(bb, head, bn, cp).to(device)
                            model.train()
                            return model, segmentor_runner(model, 1, h, w, device)
                        name = f"{bb}{'+cp' if cp else ''} {head} bn={bn} {h}x{w}"
                        cases.append(Case(name, "segmentor", build, "fp32", 1,
                                          dict(backbone=bb, with_cp=cp, head=head, bn=bn, size=[h, w])))
    return cases


def kernel_rows(archs: Sequence[str], device: torch.device, lean: Optional[str]) -> List[Dict[str, Any]]:
    """Kernels per training step of RevBiFPN backbones: reversible vs plain, frozen vs training BN."""
    rows = []
    x = torch.randn(2, 3, 128, 128, device=device)
    for arch in archs:
        for mode in ("plain", "reversible"):
            for bn in ("frozen", "train"):
                torch.manual_seed(0)
                kw = dict(lean_recompute=lean) if lean else {}
                # the policy a GPU runs: frozen BN not folded (the CPU default folds it)
                m = RevBiFPN(arch, num_classes=0, memory_mode=mode, fold_frozen_bn=False, **kw).to(device)
                set_bn(m, frozen=bn == "frozen")
                training_loss(m(x)).backward()  # warm-up
                m.zero_grad(set_to_none=True)
                fwd, bwd = count_step_kernels(lambda: m(x))
                rows.append(dict(name=f"revbifpn_{arch} {mode} bn={bn}", group="kernels", amp="fp32", arch=arch,
                                 mode=mode, bn=bn, lean=lean or "default", kernels_fwd=fwd, kernels_bwd=bwd,
                                 kernels=fwd + bwd, input=list(x.shape)))
                log(f"{rows[-1]['name']}: forward {fwd}, backward {bwd}, total {fwd + bwd}")
    return rows


# =========================================================================== reporting
_LEAN_SUFFIX = {"neck": "", "all": "_lean", "none": "_nolean"}


def _variant(arch: str, stream: str, lean: str = "neck") -> str:
    """Row name of a reversible backbone with ``stream`` residual streams (float64 is the plain
    name) and ``lean_recompute=lean`` (the default ``'neck'`` has no suffix)."""
    return (f"revbifpn_{arch}_reversible" + ("" if stream == "float64" else f"_{stream}streams")
            + _LEAN_SUFFIX[lean])


def _ratio(rows, a: str, b: str, key: str, amp: str = "fp32") -> Optional[float]:
    ra = next((r for r in rows if r["name"] == a and r["amp"] == amp), None)
    rb = next((r for r in rows if r["name"] == b and r["amp"] == amp), None)
    if not ra or not rb or not rb.get(key) or key not in ra or math.isnan(rb[key]) or math.isnan(ra[key]):
        return None
    return ra[key] / rb[key]


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def render_rows(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> List[str]:
    """The generic table: one line per row, the columns any row has."""
    cols = [("params (M)", "params_m", ".3f"), ("saved GB/sample", "saved_gb_per_sample", ".4f"),
            ("peak GB/sample", "peak_gb_per_sample", ".4f"), ("step s", "step_s", ".3f"),
            ("kernels/step", "kernels", "d")]
    if meta["suite"] == "kernels":
        cols = [("forward kernels", "kernels_fwd", "d"), ("backward kernels", "kernels_bwd", "d")] + cols
    cols = [c for c in cols if any(_fmt(r.get(c[1])) for r in rows)]
    out = [f"Device: {meta['device_name']} · torch {meta['torch']} · input {meta['input']} · "
           f"{meta['threads']} threads", "",
           "| model | group | amp | " + " | ".join(c[0] for c in cols) + " |",
           "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [_fmt(r.get(k), f) for _, k, f in cols]
        if r.get("error"):
            cells[-1] = (cells[-1] + " " if cells[-1] else "") + f"failed: {r['error']}"
        out.append(f"| {r['name']} | {r['group']} | {r['amp']} | " + " | ".join(cells) + " |")
    return out + [""]


def backbone_ratios(rows: List[Dict[str, Any]]) -> List[str]:
    """Side-by-side ratios of the ``backbones`` suite (reversible vs plain, lean variants, ...)."""
    lines = []
    mem = "peak_gb_per_sample" if any("peak_gb_per_sample" in r for r in rows) else "saved_gb_per_sample"
    for amp in sorted({r["amp"] for r in rows}):
        for arch in ARCH_SETTINGS:
            for key, what in (("saved_gb_per_sample", "saved"), ("peak_gb_per_sample", "peak")):
                r = _ratio(rows, f"revbifpn_{arch}_plain", f"revbifpn_{arch}_reversible", key, amp)
                if r is not None:
                    lines.append(f"- {arch} {amp}: plain/reversible {what} memory {r:.1f}x")
            t = _ratio(rows, f"revbifpn_{arch}_reversible", f"revbifpn_{arch}_plain", "step_s", amp)
            if t is not None:
                lines.append(f"- {arch} {amp}: reversible/plain step time {t:.2f}x")
            for stream in ("float32", "float64"):
                for key, what in ((mem, "memory"), ("step_s", "step time")):
                    for lean in ("all", "none"):
                        r = _ratio(rows, _variant(arch, stream, lean), _variant(arch, stream), key, amp)
                        if r is not None:
                            lines.append(f"- {arch} {amp} {stream} streams: lean_recompute='{lean}' / "
                                         f"default ('neck') {what} {r:.2f}x")
        neck = _ratio(rows, "revbifpn_s3_reversible+RevBiFPNNeck", "revbifpn_s3_reversible+HRFPN", mem, amp)
        if neck is not None:
            lines.append(f"- s3 {amp}: backbone+RevBiFPNNeck / backbone+HRFPN memory {neck:.2f}x")
    for kind in ("faster", "mask"):
        for ours in ("revbifpn_s3", "revbifpn_s3_lean"):
            label = "RevBiFPN-S3" + (" (lean_recompute='all')" if ours.endswith("_lean") else "")
            for key, what in (("saved_gb_per_sample", "saved"), ("peak_gb_per_sample", "peak")):
                r = _ratio(rows, f"{kind}_rcnn_hrnetv2p_w18", f"{kind}_rcnn_{ours}", key)
                if r is not None:
                    lines.append(f"- {kind.title()} R-CNN: HRNetV2p-W18 / {label} {what} memory {r:.2f}x")
    sweep = {(r["ext"], r["mode"]): r for r in rows if r["group"] == "depth_sweep" and "error" not in r}
    for key, what in (("saved_gb_per_sample", "saved"), ("peak_gb_per_sample", "peak")):
        if all(key in sweep.get((e, m), {}) for e in (2, 16) for m in ("reversible", "plain")):
            g, gp = (sweep[16, m][key] / sweep[2, m][key] - 1 for m in ("reversible", "plain"))
            lines.append(f"- depth sweep 2 -> 16 extension layers: reversible {what} memory {100 * g:+.1f} %, "
                         f"plain {100 * gp:+.1f} %")
    return lines


# COCO APs (1x schedule) quoted next to the measured figures: (box AP, mask AP), None = unknown.
# "paper": the RevBiFPN paper's detection figures (its HRNet / ResNet entries are quoted from
# the HRNet paper; its Mask R-CNN S3 entry and all box APs of Mask R-CNN from the results
# table of the official repository); "mmdet": mmdet 3.x metafiles
# (configs/{hrnet,faster_rcnn,mask_rcnn}/metafile.yml).
COCO_AP: Dict[Tuple[str, str], Dict[str, Tuple[Optional[float], Optional[float]]]] = {
    ("faster", "revbifpn_s3"): dict(paper=(38.7, None), mmdet=(None, None)),
    ("faster", "revbifpn_s6"): dict(paper=(42.2, None), mmdet=(None, None)),
    ("faster", "hrnetv2p_w18"): dict(paper=(36.2, None), mmdet=(36.9, None)),
    ("faster", "hrnetv2p_w32"): dict(paper=(39.6, None), mmdet=(40.2, None)),
    ("faster", "r50_fpn"): dict(paper=(None, None), mmdet=(37.4, None)),
    ("faster", "r101_fpn"): dict(paper=(39.2, None), mmdet=(39.4, None)),
    ("mask", "revbifpn_s3"): dict(paper=(39.4, 35.5), mmdet=(None, None)),
    ("mask", "revbifpn_s6"): dict(paper=(43.3, 38.7), mmdet=(None, None)),
    ("mask", "hrnetv2p_w18"): dict(paper=(37.1, 33.8), mmdet=(37.7, 34.2)),
    ("mask", "hrnetv2p_w32"): dict(paper=(40.9, 36.7), mmdet=(41.2, 37.1)),
    ("mask", "r50_fpn"): dict(paper=(None, None), mmdet=(38.2, 34.7)),
    ("mask", "r101_fpn"): dict(paper=(None, 36.1), mmdet=(40.0, 36.1)),
}


def _ap(kind: str, bb: str, source: str, i: int) -> str:
    v = COCO_AP.get((kind, bb), {}).get(source, (None, None))[i]
    return "n/a" if v is None else f"{v:.1f}"


def render_fair_fight(rows: List[Dict[str, Any]]) -> List[str]:
    """The detector comparison: APs, peak, saved, step time, kernels per detector."""
    out = []
    for kind in ("faster", "mask"):
        det = sorted((r for r in rows if r.get("detector") == kind and r["group"] == "detector"),
                     key=lambda r: (DETECTOR_BACKBONES.index(r["backbone"]), bool(r.get("with_cp")), r["amp"] != "fp32"))
        if not det:
            continue
        title = "Faster R-CNN" if kind == "faster" else "Mask R-CNN"
        ap_cols = "box AP paper | box AP mmdet |" + (" mask AP paper | mask AP mmdet |" if kind == "mask" else "")
        out += [f"**{title}** (COCO APs: see the notes below the tables)", "",
                f"| backbone | with_cp | amp | {ap_cols} peak GB/sample | saved GB/sample | step s | kernels/step |",
                "|---|---|---|" + "---|" * (ap_cols.count("|") + 4)]
        for r in det:
            bb = r["backbone"]
            aps = [_ap(kind, bb, "paper", 0), _ap(kind, bb, "mmdet", 0)]
            if kind == "mask":
                aps += [_ap(kind, bb, "paper", 1), _ap(kind, bb, "mmdet", 1)]
            figs = [_fmt(r.get("peak_gb_per_sample"), ".3f"), _fmt(r.get("saved_gb_per_sample"), ".3f"),
                    _fmt(r.get("step_s"), ".2f"), _fmt(r.get("kernels"), "d")]
            if r.get("error"):
                figs = ["failed: " + r["error"], "", "", ""]
            cp = "yes" if r.get("with_cp") else ("" if bb.startswith("revbifpn") else "no")
            label = bb + (" (BN not folded)" if r.get("fold_frozen_bn") is False else "")
            out.append(f"| {label} | {cp} | {r['amp']} | " + " | ".join(aps + figs) + " |")
        out.append("")
    return out


def plot(rows: List[Dict[str, Any]], path: str, meta: Dict[str, Any]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    if meta["suite"] == "fair-fight":
        return _plot_fair_fight(plt, rows, path, meta)
    mem = "peak_gb_per_sample" if any("peak_gb_per_sample" in r for r in rows) else "saved_gb_per_sample"
    what = "peak memory" if mem.startswith("peak") else "saved for backward"
    ok = [r for r in rows if "error" not in r and r.get(mem) is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for mode, style in (("reversible", "o-"), ("plain", "s--")):
        pts = sorted((r["params_m"], r[mem]) for r in ok
                     if r["group"] == "backbone" and r.get("mode") == mode and r["amp"] == "fp32")
        if pts:
            ax.plot(*zip(*pts), style, label=f"RevBiFPN {mode}")
    for r in ok:
        if r["group"] in ("baseline", "segmentor") and r["amp"] == "fp32":
            ax.plot(r["params_m"], r[mem], "^", label=r["name"])
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel(f"{what} per sample (GB)")
    ax.set_yscale("log")
    ax.set_title(f"{meta['suite']}, input {meta['input']}")
    ax.legend(fontsize=6)
    ax = axes[1]
    for mode, style in (("reversible", "o-"), ("plain", "s--")):
        pts = sorted((r["ext"], r[mem]) for r in ok if r["group"] == "depth_sweep" and r["mode"] == mode)
        if pts:
            ax.plot(*zip(*pts), style, label=f"S0 width, {mode}")
    ax.set_xlabel("extension layers")
    ax.set_ylabel(f"{what} per sample (GB)")
    ax.set_title("depth sweep")
    ax.legend(fontsize=7)
    fig.suptitle(meta["device_name"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fair_fight(plt, rows, path, meta) -> None:
    """Per detector kind: paper box AP against peak memory, and against step time."""
    kinds = [k for k in ("faster", "mask") if any(r.get("detector") == k for r in rows)]
    if not kinds:
        return
    fig, axes = plt.subplots(len(kinds), 2, figsize=(12, 4.5 * len(kinds)), squeeze=False)
    for ax_row, kind in zip(axes, kinds):
        for ax, key, xlabel in ((ax_row[0], "peak_gb_per_sample", "peak memory per sample (GB)"),
                                (ax_row[1], "step_s", "step time (s)")):
            for r in rows:
                if r.get("detector") != kind or r["group"] != "detector" or "error" in r or r["amp"] != "fp32":
                    continue
                src = COCO_AP.get((kind, r["backbone"]), {})
                ap, marker = (src.get("paper") or (None,))[0], "o"
                if ap is None:
                    ap, marker = (src.get("mmdet") or (None,))[0], "s"  # square: mmdet's AP
                x = r.get(key)
                if ap is None or x is None or math.isnan(x):
                    continue
                ours = r["backbone"].startswith("revbifpn")
                ax.plot(x, ap, marker, color="C3" if ours else ("C0" if r.get("with_cp") else "C7"),
                        fillstyle="full" if r.get("with_cp") or ours else "none", markersize=8)
                ax.annotate(r["backbone"] + (" cp" if r.get("with_cp") else ""), (x, ap), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("COCO box AP (paper; squares: mmdet)")
            ax.set_title(f"{'Faster' if kind == 'faster' else 'Mask'} R-CNN, {meta['device_name']}, "
                         f"input {meta['input']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_FAIR_FIGHT_NOTES = """COCO APs, 1x schedule. "paper": the RevBiFPN paper (its HRNet and ResNet entries are
quoted from the HRNet paper; the Mask R-CNN box APs and the S3 Mask R-CNN entry come from the
results table of the official repository). "mmdet": the mmdet 3.x model zoo (metafile.yml of
configs/hrnet, faster_rcnn, mask_rcnn). n/a: not published there. with_cp changes memory and
time, not AP. Peak: the peak probe on, one step per model; step time: a separate pass without
the probe, all models stepped in turn, minimum over the rounds.
"""


def report(out_dir: str, meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    """Write ``benchmark.json``, ``benchmark.md`` and ``benchmark.png``; return the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1, default=float)
    lines = render_rows(meta, rows)
    if meta["suite"] == "fair-fight":
        lines = render_fair_fight(rows) + [_FAIR_FIGHT_NOTES] + lines
    elif meta["suite"] == "backbones":
        lines += ["Ratios (measured side by side in this run):"] + backbone_ratios(rows)
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
        f.write(md)
    plot(rows, os.path.join(out_dir, "benchmark.png"), meta)
    return md


# =========================================================================== main
def _csv(value: Optional[str], default: str) -> List[str]:
    return [v for v in (value or default).split(",") if v and v != "none"]


def _size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are HxW, e.g. 512x1024; got {text!r}") from None
    return h, w


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="backbones", choices=("backbones", "fair-fight", "seg", "kernels"))
    ap.add_argument("--pass", dest="passes", default="all", choices=("all", "peak", "time", "report"),
                    help="fair-fight / seg: the peak pass (probe on), the interleaved time pass (probe off), "
                         "both (time first; on CPU the peak pass then runs in a fresh process), or only merge <out>/peak.json and <out>/time.json; "
                         "backbones: 'time' for interleaved step times only")
    ap.add_argument("--quick", action="store_true", help="small input, few models: minutes on 2 CPU cores")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--height", type=int, default=None, help="default 800 (quick: 256)")
    ap.add_argument("--width", type=int, default=None, help="default 1344 (quick: 384)")
    ap.add_argument("--batch", type=int, default=None, help="default 2 on CUDA, 1 on CPU")
    ap.add_argument("--amp", default="fp32", help="comma list of fp32, bf16, fp16 (autocast)")
    ap.add_argument("--archs", default=None, help="comma list, default s0..s6 (quick and kernels: s0,s3); "
                                                  "'none' for no rows")
    ap.add_argument("--baselines", default=None,
                    help="default hrnet_w18,hrnet_w32,hrnet_w48,resnet50,resnet101; 'none' for no rows")
    ap.add_argument("--streams", default="float64",
                    help="residual-stream dtypes of the reversible rows (comma list of float64, float32)")
    ap.add_argument("--lean", default=None, choices=("none", "neck", "all"),
                    help="kernels suite: RevBiFPN's lean_recompute (default: the model's default)")
    ap.add_argument("--no-lean", action="store_true",
                    help="skip the lean_recompute='all' and 'none' rows (the default is 'neck')")
    ap.add_argument("--no-necks", action="store_true", help="skip the backbone + neck rows")
    ap.add_argument("--no-detectors", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-time", action="store_true", help="backbones suite: memory only, no timed steps")
    ap.add_argument("--no-peak", action="store_true",
                    help="no peak probe (on CPU its glibc setting slows steps by 20-40 %%)")
    ap.add_argument("--no-kernels", action="store_true", help="no kernel count (one step per row less)")
    ap.add_argument("--detectors", default="faster,mask", help="fair-fight: comma list of faster, mask")
    ap.add_argument("--ff-backbones", default=",".join(DETECTOR_BACKBONES), help="fair-fight: comma list")
    ap.add_argument("--with-cp", default="both", choices=("both", "on", "off"),
                    help="fair-fight / seg: baseline rows with with_cp=True, False or both")
    ap.add_argument("--seg-backbones", default=",".join(SEG_BACKBONES), help="seg: comma list")
    ap.add_argument("--seg-sizes", default="512x1024,1024x2048", help="seg: comma list of HxW")
    ap.add_argument("--seg-heads", default="fcn,lean", help="seg: RevBiFPN heads, comma list of fcn, lean")
    ap.add_argument("--fold", default="auto", choices=("auto", "off", "both"),
                    help="fair-fight, and backbones with --bn frozen: RevBiFPN's fold_frozen_bn, the "
                         "default ('auto': folded on CPU), off, or both rows side by side")
    ap.add_argument("--bn", default="train", choices=("train", "frozen"),
                    help="backbones suite: BatchNorm training (default; float64 streams) or frozen (norm_eval, "
                         "as in detection; the model's default streams, float32)")
    ap.add_argument("--seg-bn", default="train,frozen", help="seg: comma list of train, frozen")
    ap.add_argument("--rounds", type=int, default=3, help="time pass: interleaved rounds (minimum taken)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="backbones suite: timed steps per row")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default="work_dirs/benchmark")
    args = ap.parse_args(argv)
    cpu = args.device.startswith("cpu")
    args.archs = _csv(args.archs, "s0,s3" if args.quick or args.suite == "kernels" else "s0,s1,s2,s3,s4,s5,s6")
    args.baselines = _csv(args.baselines, "hrnet_w18,resnet50" if args.quick else
                          "hrnet_w18,hrnet_w32,hrnet_w48,resnet50,resnet101")
    args.amps = _csv(args.amp, "fp32")
    args.streams = _csv(args.streams, "float64")
    args.detectors = _csv(args.detectors, "faster,mask")
    args.ff_backbones = _csv(args.ff_backbones, "")
    args.seg_backbones = _csv(args.seg_backbones, "")
    args.seg_sizes = [_size(s) for s in _csv(args.seg_sizes, "")]
    args.seg_heads = _csv(args.seg_heads, "fcn")
    args.seg_bn = _csv(args.seg_bn, "train")
    for flag, values, allowed in (("--amp", args.amps, ("fp32", "bf16", "fp16")),
                                  ("--detectors", args.detectors, ("faster", "mask")),
                                  ("--ff-backbones", args.ff_backbones, DETECTOR_BACKBONES),
                                  ("--seg-backbones", args.seg_backbones, SEG_BACKBONES),
                                  ("--seg-heads", args.seg_heads, ("fcn", "lean")),
                                  ("--seg-bn", args.seg_bn, ("train", "frozen")),
                                  ("--archs", args.archs, tuple(ARCH_SETTINGS))):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"{flag}: unknown {bad}; choose from {', '.join(allowed)}")
    args.height = args.height or (256 if args.quick else 800)
    args.width = args.width or (384 if args.quick else 1344)
    args.batch = args.batch or (1 if cpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 2)
    args.steps = args.steps if args.steps is not None else (1 if cpu else 4)
    if args.no_time:
        args.steps = 0
    return args


def _load_mm() -> bool:
    try:
        import revbifpn_mm.mm  # noqa: F401  registers RevBiFPN and RevBiFPNNeck
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        return True
    except Exception as err:  # noqa: BLE001  any broken mm install: run the torch-only rows
        log(f"mm stack unavailable ({type(err).__name__}: {err}); necks/detectors skipped")
        return False


def _meta(args, device: torch.device, peak: bool, input_shape) -> Dict[str, Any]:
    cpu = device.type == "cpu"
    return dict(suite=args.suite, device=str(device),
                device_name=torch.cuda.get_device_name(device) if not cpu else "cpu",
                torch=torch.__version__, input=list(input_shape), warmup=args.warmup, steps=args.steps,
                rounds=args.rounds, threads=torch.get_num_threads(), quick=args.quick,
                peak=(None if not peak else "cuda max_memory_allocated - allocated before the step"
                      if not cpu else "peak RSS of one step - RSS before it (glibc mmap threshold 64 KiB)"),
                saved="bytes saved for backward (dedup by storage, params excluded)",
                kernels="aten ops of forward + backward, views excluded" if not args.no_kernels else None)


def _read_pass(out_dir: str, name: str, part: str = "rows") -> Any:
    path = os.path.join(out_dir, f"{name}.json")
    if not os.path.exists(path):
        return [] if part == "rows" else {}
    with open(path) as f:
        return json.load(f)[part]


def _write_pass(out_dir: str, name: str, meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    """Write ``<out>/<name>.json``; rows of earlier runs with other (name, amp) keys stay, so
    that a pass can be run in parts (e.g. one ``--amp`` or ``--detectors`` at a time)."""
    kept = {(r["name"], r["amp"]): r for r in _read_pass(out_dir, name)}
    kept.update({(r["name"], r["amp"]): r for r in rows})
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=list(kept.values())), f, indent=1, default=float)


def _with_pass(argv: List[str], name: str) -> List[str]:
    """``argv`` with its ``--pass`` option replaced by ``--pass name``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--pass":
            skip = True
            continue
        if a.startswith("--pass="):
            continue
        out.append(a)
    return out + ["--pass", name]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[benchmark] %(message)s", stream=sys.stderr)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    B, H, W = args.batch, args.height, args.width

    if args.suite == "kernels":
        rows = kernel_rows(args.archs, device, args.lean)
        meta = _meta(args, device, False, (2, 3, 128, 128))
        print(report(args.out, meta, rows))
        return 0

    have_mm = _load_mm()
    if args.suite == "backbones":
        x = torch.randn(B, 3, H, W, device=device)
        cases = backbone_cases(args, x, have_mm) + ([] if args.no_sweep else sweep_cases(args, device))
        if args.passes == "time":  # interleaved step times only; no probe (its glibc setting slows CPU steps)
            rows = time_pass(cases, device, args.rounds)
            print(report(args.out, _meta(args, device, False, (B, 3, H, W)), rows))
            return 0
        probe = None if args.no_peak else peak_probe_for(device)
        rows = [measure_case(c, device, args.warmup, args.steps, probe, not args.no_kernels) for c in cases]
        print(report(args.out, _meta(args, device, probe is not None, (B, 3, H, W)), rows))
        return 0

    if not have_mm:
        log(f"the {args.suite} suite needs mmdet / mmseg with mmcv's ops")
        return 1
    if args.suite == "fair-fight":
        cases = fair_fight_cases(args, device, B, H, W)
        shape: Any = (B, 3, H, W)
    else:
        cases = seg_cases(args, device)
        shape = ["1x3x%dx%d" % s for s in args.seg_sizes]
    if args.passes in ("all", "time"):
        # before any probe: on CPU the probe's glibc setting would slow these steps
        time_rows = time_pass(cases, device, args.rounds)
        _write_pass(args.out, "time", _meta(args, device, False, shape), time_rows)
    if args.passes == "all" and device.type == "cpu" and not args.no_peak:
        # The CPU probe reads the growth of the resident set; after the time pass this
        # process holds freed heap pages that glibc hands out again, so a peak read here
        # would be too low. The peak pass runs in a fresh process instead.
        argv_peak = _with_pass(sys.argv[1:] if argv is None else list(argv), "peak")
        rc = subprocess.call([sys.executable, os.path.abspath(__file__)] + argv_peak)
        if rc:
            log(f"the peak pass (a fresh process) failed with exit status {rc}")
            return rc
    elif args.passes in ("all", "peak"):
        probe = None if args.no_peak else peak_probe_for(device)
        meta = _meta(args, device, probe is not None, shape)
        for case in cases:  # written row by row: rows measured before a crash (e.g. out of RAM) stay
            _write_pass(args.out, "peak", meta, peak_pass([case], device, args.warmup, probe, not args.no_kernels))
    rows = merge_rows(_read_pass(args.out, "peak"), _read_pass(args.out, "time"))
    if not rows:
        log(f"nothing to report: no peak.json or time.json in {args.out}")
        return 1
    peak = any("peak_gb_per_sample" in r for r in rows)
    stored = _read_pass(args.out, "peak", "meta") or _read_pass(args.out, "time", "meta")
    meta = dict(stored, **{k: v for k, v in _meta(args, device, peak, shape).items() if k not in stored})
    print(report(args.out, meta, rows))  # (the measured input and device, also for --pass report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
