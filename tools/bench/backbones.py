"""``backbones``: RevBiFPN backbones fully reversible, plain and at ``plain_segments`` settings between the
two, beside the HRNet / ResNet backbones of mmdet's detector configs."""
from __future__ import annotations

import argparse
from typing import List

import torch

from revbifpn_mm.models import ARCH_SETTINGS

from . import add_renamed
from . import models as M
from .measure import Case


def add_arguments(ap: argparse.ArgumentParser) -> None:  # noqa: D103
    ap.add_argument("--archs", default="s0,s3", help="RevBiFPN sizes, comma list (default s0,s3)")
    ap.add_argument("--plain-segments", default="plain",
                    help="settings besides fully reversible: comma list of 'plain', N (plain_segments=N from the "
                         "output end), inN (from the input end) and 'compiled' (compile_transforms=True); "
                         "default 'plain'")
    add_renamed(ap, "--budgets", "--plain-segments")
    ap.add_argument("--bn", default="frozen", choices=("frozen", "train"),
                    help="frozen (norm_eval, as detection trains; float32 streams) or train (float64 streams)")
    ap.add_argument("--baselines", default="none",
                    help="mmdet backbones of the detector configs: comma list of hrnetv2p_w18, hrnetv2p_w32, "
                         "r50_fpn, r101_fpn (each with and without with_cp); default none")


def _settings(text: str) -> List[tuple]:
    out = []
    for item in filter(None, text.split(",")):
        n = item.removeprefix("in")
        if item == "plain":
            out.append(("plain", dict(memory_mode="plain")))
        elif item == "compiled":
            out.append(("compiled", dict(compile_transforms=True)))
        elif n.isdigit():
            frm = "input" if n != item else "output"
            out.append((f"plain_segments={n}" + (",from_input" if frm == "input" else ""),
                        dict(plain_segments=int(n), plain_from=frm)))
        else:
            raise ValueError(f"--plain-segments: 'plain', 'compiled', N or inN, got {item!r}")
    return out


def cases(args: argparse.Namespace, device: torch.device) -> List[Case]:  # noqa: D103
    b, h, w = args.input
    frozen = args.bn == "frozen"
    out = []
    for arch in filter(None, args.archs.split(",")):
        if arch not in ARCH_SETTINGS:
            raise ValueError(f"unknown arch {arch!r}; one of {sorted(ARCH_SETTINGS)}")
        ref = f"revbifpn_{arch} reversible"
        for label, kw in [("reversible", {})] + _settings(args.plain_segments):
            out.append(Case(f"revbifpn_{arch} {label}", "backbone",
                            M.builder(lambda a=arch, kw=kw: M.revbifpn(a, **kw), b, h, w, device, frozen),
                            batch=b, info=dict(arch=arch, budget=label, ref=None if label == "reversible" else ref)))
    for name in filter(lambda n: n and n != "none", args.baselines.split(",")):
        for cp in (False, True):
            out.append(Case(name + (" with_cp" if cp else ""), "baseline", M.builder(
                lambda n=name, cp=cp: M.build(M.detector_cfg("faster", n, cp).backbone, "mmdet"), b, h, w, device,
                frozen), batch=b, info=dict(backbone=name, with_cp=cp, ref=name if cp else None)))
    return out
