"""``kernels``: aten kernels dispatched per training step of RevBiFPN backbones, reversible vs plain,
frozen vs training BN. The count does not depend on the device; on a GPU in the launch-bound regime a
step's time follows it."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

import torch

from revbifpn_mm.models import RevBiFPN

from . import models as M
from .measure import count_step_kernels, training_loss


def add_arguments(ap: argparse.ArgumentParser) -> None:  # noqa: D103
    ap.add_argument("--archs", default="s0,s3", help="RevBiFPN sizes, comma list")


def rows(args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:  # noqa: D103
    b, h, w = args.input
    x = M.image(b, h, w, device)
    out = []
    for arch in filter(None, args.archs.split(",")):
        for bn in ("frozen", "train"):
            for mode in ("plain", "reversible"):
                torch.manual_seed(0)
                m = M.freeze_bn(RevBiFPN(arch, num_classes=0, memory_mode=mode).to(device), bn == "frozen")
                training_loss(m(x)).backward()  # warm-up
                m.zero_grad(set_to_none=True)
                fwd, bwd = count_step_kernels(lambda: m(x))
                out.append(dict(name=f"revbifpn_{arch} {mode} bn={bn}", group="kernels", amp="fp32", arch=arch,
                                mode=mode, bn=bn, kernels_fwd=fwd, kernels_bwd=bwd, kernels=fwd + bwd,
                                ref=f"revbifpn_{arch} plain bn={bn}" if mode == "reversible" else None))
    return out
