"""``kernels``: kernels launched per training step of RevBiFPN backbones, plain, reversible and reversible
with ``compile_transforms``, frozen and training BN, beside mmdet's HRNetV2p / ResNet backbones.

Counted with ``torch.profiler``, which sees compiled code run as compiled: on CUDA every GPU kernel; on CPU
every *outermost* operator call but :data:`meters.VIEW_OPS`, plus inductor's C++ kernels (``cpp_fused_*``).
No stochastic depth, as the configs train. docs/benchmarks.md, "Compiled transforms", says more.
"""
from __future__ import annotations

import argparse
import logging
import re
import time
from collections import Counter
from typing import Any, Callable, Dict, List

import torch
from torch.profiler import ProfilerActivity, profile

from meters import VIEW_OPS
from revbifpn_mm.models import RevBiFPN

from . import models as M
from .measure import training_loss

logger = logging.getLogger(__name__)
MODES = {"plain": dict(memory_mode="plain"), "reversible": {},
         "compiled": dict(compile_transforms=True)}
_OP = re.compile(r"^(?!autograd::|torch::)\w+::(\w+)")


def add_arguments(ap: argparse.ArgumentParser) -> None:  # noqa: D103
    ap.add_argument("--archs", default="s0,s3", help="RevBiFPN sizes, comma list")
    ap.add_argument("--modes", default="plain,reversible,compiled",
                    help=f"comma list of {', '.join(MODES)} (compiled: reversible with compile_transforms=True)")
    ap.add_argument("--bn", default="frozen,train", help="comma list of frozen, train")
    ap.add_argument("--baselines", default="hrnetv2p_w18,r50_fpn",
                    help="mmdet backbones (of the Faster R-CNN configs) counted the same way; 'none' for none")
    ap.add_argument("--top", type=int, default=0, metavar="N",
                    help="also log each row's N most launched operators, and count its convolutions (forward "
                         "and backward: calls no compiler fuses) as the row's 'convolutions'")


def _is_counted(name: str) -> bool:
    if "cpp_fused" in name or name.startswith("triton_"):
        return True
    m = _OP.match(name)
    return m is not None and m.group(1) not in VIEW_OPS


def _count_launches(run: Callable[[], Any], names: Counter) -> int:
    """Kernels launched by ``run()``, each also counted in ``names`` by its operator or kernel name."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.events()
    launched = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if not launched:  # CPU: the outermost counted calls
        for e in filter(lambda e: _is_counted(e.name), events):
            parent = e.cpu_parent
            while parent is not None and not _is_counted(parent.name):
                parent = parent.cpu_parent
            if parent is None:
                launched.append(e.name)
    names.update(launched)
    return len(launched)


def _row(name: str, build: M.Builder, top: int = 0, **info: Any) -> Dict[str, Any]:
    model, run = build()
    t0 = time.perf_counter()
    training_loss(run()).backward()  # warm-up (compiles where compiled)
    first = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    names: Counter = Counter()
    loss: List[torch.Tensor] = []
    fwd = _count_launches(lambda: loss.append(training_loss(run())), names)
    bwd = _count_launches(lambda: loss.pop().backward(), names)
    logger.info("%s: %d kernels (first step %.1f s)", name, fwd + bwd, first)
    row = dict(name=name, group="kernels", amp="fp32", kernels_fwd=fwd, kernels_bwd=bwd, kernels=fwd + bwd,
               first_step_s=first, **info)
    if top:
        row["convolutions"] = sum(n for k, n in names.items() if "conv" in k.lower() and "cpp_fused" not in k)
        logger.info("%s: %d convolutions; most launched: %s", name, row["convolutions"],
                    ", ".join(f"{k} {n}" for k, n in names.most_common(top)))
    return row


def rows(args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:  # noqa: D103
    import torch._inductor.config as inductor_config  # slow to import: only here
    inductor_config.cpp.enable_kernel_profile = True  # inductor's C++ kernels seen by the profiler (read at compile)
    b, h, w = args.input
    out = []
    for arch in filter(None, args.archs.split(",")):
        for bn in filter(None, args.bn.split(",")):
            for mode in filter(None, args.modes.split(",")):
                build = M.builder(lambda: RevBiFPN(arch, num_classes=0, drop_path_rate=0.0, **MODES[mode]),
                                  b, h, w, device, bn == "frozen")
                out.append(_row(f"revbifpn_{arch} {mode} bn={bn}", build, args.top, arch=arch, mode=mode, bn=bn,
                                ref=f"revbifpn_{arch} plain bn={bn}" if mode != "plain" else None))
    for name in filter(lambda n: n and n != "none", args.baselines.split(",")):
        for bn in filter(None, args.bn.split(",")):
            build = M.builder(lambda: M.build(M.detector_cfg("faster", name).backbone, "mmdet"), b, h, w, device,
                              bn == "frozen")
            out.append(_row(f"{name} bn={bn}", build, args.top, arch=name, mode="eager", bn=bn))
    return out
