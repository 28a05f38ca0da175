"""``depth``: the S0 width with 2-16 extension layers, reversible and plain: reversible training memory
does not grow with depth."""
from __future__ import annotations

import argparse
from typing import List

import torch

from revbifpn_mm.models import RevBiFPN

from . import models as M
from .measure import Case


def add_arguments(ap: argparse.ArgumentParser) -> None:  # noqa: D103
    ap.add_argument("--exts", default="2,4,8,16", help="extension layers, comma list")


def cases(args: argparse.Namespace, device: torch.device) -> List[Case]:  # noqa: D103
    b, h, w = args.input
    return [Case(f"s0 ext={ext} {mode}", "depth", M.builder(
        lambda e=ext, m=mode: RevBiFPN("s0", num_classes=0, num_ext_layers=e, memory_mode=m), b, h, w, device),
        batch=b, info=dict(ext=ext, mode=mode, ref=f"s0 ext=2 {mode}" if ext != 2 else None))
        for ext in map(int, args.exts.split(",")) for mode in ("reversible", "plain")]
