"""``seg``: whole segmentors, RevBiFPN (mmseg's FCNHead or LeanFCNHead) against mmseg's HRNetV2 FCN with
and without ``with_cp``, BN training as the configs train it (SyncBN becomes BN on one device) or frozen."""
from __future__ import annotations

import argparse
from typing import List

import torch

from . import models as M
from .fair_fight import cp_variants
from .measure import Case


def add_arguments(ap: argparse.ArgumentParser) -> None:  # noqa: D103
    ap.add_argument("--backbones", default="revbifpn_s4,hrnet_w48", help=f"comma list of {', '.join(M.SEGMENTORS)}")
    ap.add_argument("--heads", default="lean", help="RevBiFPN heads: comma list of fcn, lean")
    ap.add_argument("--bn", default="train", help="comma list of train, frozen")
    ap.add_argument("--with-cp", default="both", choices=("both", "on", "off"), help="HRNet rows with with_cp")


def cases(args: argparse.Namespace, device: torch.device) -> List[Case]:  # noqa: D103
    b, h, w = args.input
    out = []
    for bb in filter(None, args.backbones.split(",")):
        heads = args.heads.split(",") if bb.startswith("revbifpn_") else ["fcn"]
        for cp in cp_variants(bb, args.with_cp):
            for bn in filter(None, args.bn.split(",")):
                for head in heads:
                    build = M.builder(lambda bb=bb, hd=head, bn=bn, cp=cp: M.segmentor(bb, hd, bn, cp),
                                      b, h, w, device, False, M.segmentor_run)
                    out.append(Case(f"{bb}{'+cp' if cp else ''} {head} bn={bn} {h}x{w}", "segmentor", build, "fp32", b,
                                    dict(backbone=bb, with_cp=cp, head=head, bn=bn, size=[h, w])))
    return out
