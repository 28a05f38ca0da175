"""``fair-fight``: whole detectors as users train them, RevBiFPN against HRNetV2p and ResNet-FPN with and
without ``with_cp`` (mmdet's 1x configs), plus their backbone + neck alone."""
from __future__ import annotations

import argparse
from typing import List

import torch

from . import add_renamed
from . import models as M
from .measure import Case


def add_arguments(ap: argparse.ArgumentParser) -> None:  # noqa: D103
    ap.add_argument("--detectors", default="faster", help="comma list of faster, mask, neck (backbone + neck rows)")
    ap.add_argument("--backbones", default="revbifpn_s3,hrnetv2p_w18,r101_fpn",
                    help=f"comma list of {', '.join(M.DETECTORS)}")
    ap.add_argument("--with-cp", default="both", choices=("both", "on", "off"), help="baseline rows with with_cp")
    ap.add_argument("--dtypes", default="fp32", help="comma list of fp32, bf16, fp16 (the last two under autocast)")
    add_renamed(ap, "--amp", "--dtypes")
    ap.add_argument("--compiled", action="store_true",
                    help="each RevBiFPN row also with compile_transforms=True (labelled 'compiled')")


def cp_variants(backbone: str, with_cp: str) -> tuple:
    """The ``with_cp`` settings a row set takes (RevBiFPN has none)."""
    if backbone.startswith("revbifpn_"):
        return (False,)
    return {"both": (False, True), "on": (True,), "off": (False,)}[with_cp]


def cases(args: argparse.Namespace, device: torch.device) -> List[Case]:  # noqa: D103
    b, h, w = args.input
    out = []
    for amp in filter(None, args.dtypes.split(",")):
        for bb in filter(None, args.backbones.split(",")):
            variants = [(cp, {}) for cp in cp_variants(bb, args.with_cp)]
            if args.compiled and bb.startswith("revbifpn_"):
                variants.append((False, dict(compile_transforms=True)))
            for cp, rev in variants:
                for kind in filter(None, args.detectors.split(",")):
                    label = f"{bb}{' + with_cp' if cp else ''}{' compiled' if rev else ''}"
                    info = dict(backbone=bb, with_cp=cp, **rev)
                    if kind == "neck":
                        build = M.builder(lambda bb=bb, cp=cp, rev=rev: M.backbone_neck(bb, cp, **rev), b, h, w, device)
                        out.append(Case(f"{label} backbone+neck", "backbone+neck", build, amp, b, info))
                    else:
                        build = M.builder(lambda k=kind, bb=bb, cp=cp, rev=rev: M.detector(k, bb, cp, **rev),
                                          b, h, w, device, False, M.detector_run)
                        out.append(Case(f"{kind}_rcnn {label}", "detector", build, amp, b, dict(info, detector=kind)))
    return out
