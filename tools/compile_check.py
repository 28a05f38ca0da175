"""compile_transforms on one RevBiFPN: first-step (compile) time, gradients and BN statistics against eager,
and how many graphs new input sizes add (docs/benchmarks.md).

    python tools/compile_check.py --arch s0 --size 64 [--backend aot_eager]
    python tools/compile_check.py --train CONFIG --iters 20 [--backend aot_eager]

For training and frozen BN, an eager and a compiled copy of one model each take a step on 2 x 3 x SIZE x SIZE,
then the compiled one steps at three larger sizes. ``--train`` instead trains CONFIG with compiled
transforms (no validation) and counts the graphs Dynamo compiled.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch._dynamo.utils import counters

from bench.models import freeze_bn
from fidelity import max_rel
from revbifpn_mm.core import compiled
from revbifpn_mm.models import RevBiFPN


def _step(model: nn.Module, x: torch.Tensor) -> Tuple[float, List[torch.Tensor], Dict[str, torch.Tensor]]:
    t0 = time.perf_counter()
    sum((o.float() ** 2).mean() for o in model(x)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return time.perf_counter() - t0, grads, {n: b.clone() for n, b in model.named_buffers()}


def _stat_diff(ref: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor]) -> float:
    """Largest difference of a BN running mean in running stds, or of a running variance relative to it."""
    stat = 0.0
    for k in (k for k in ref if k.endswith("running_var")):
        var, mean = ref[k].double(), k[:-len("running_var")] + "running_mean"
        stat = max(stat, ((got[k].double() - var).abs() / var).max().item(),
                   ((got[mean].double() - ref[mean].double()).abs() / var.sqrt()).max().item())
    return stat


def train_count(config: str, iters: int) -> None:
    """Train ``config`` for ``iters`` iterations with compiled transforms; print the graphs compiled."""
    import train

    graphs = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        train.main([config, "--work-dir", work_dir, "--cfg-options", "model.backbone.compile_transforms=True",
                    f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters + 1}"])
    print(f"{config}: {iters} iterations in {time.perf_counter() - t0:.0f} s, {len(compiled._by_signature)} block "
          f"signatures, {counters['stats']['unique_graphs'] - graphs} graphs compiled, failure "
          f"{compiled.compile_failure()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="s0")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backend", default="inductor",
                    help="torch.compile backend; 'aot_eager' counts the same graphs without generating code")
    ap.add_argument("--train", metavar="CONFIG", help="count the graphs of a training run of this config instead")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    compiled.BACKEND = args.backend
    if args.train:
        return train_count(args.train, args.iters)
    x = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for frozen in (False, True):
        torch.manual_seed(0)
        eager = freeze_bn(RevBiFPN(args.arch, num_classes=0, drop_path_rate=0.0), frozen)
        comp = copy.deepcopy(eager)
        comp.set_policy(compile_transforms=True)
        graphs = counters["stats"]["unique_graphs"]
        t_eager, g_ref, b_ref = _step(eager, x)
        t_comp, g, b = _step(comp, x)
        grad, stat = max_rel(g, g_ref), _stat_diff(b_ref, b)
        tracked = sorted({v.item() for k, v in b.items() if k.endswith("num_batches_tracked")})
        print(f"{args.arch} {args.size}x{args.size} {'frozen' if frozen else 'training'} BN: first step eager "
              f"{t_eager:.1f} s, compiled {t_comp:.1f} s; gradients {grad:.2e}, BN statistics {stat:.2e}, "
              f"num_batches_tracked {tracked}; signatures {len(compiled._by_signature)}, graphs "
              f"{counters['stats']['unique_graphs'] - graphs}, failure {compiled.compile_failure()}", flush=True)
    for size in (args.size + 32, args.size + 64, args.size + 96):
        graphs = counters["stats"]["unique_graphs"]
        t, _, _ = _step(comp, torch.randn(2, 3, size, size))
        print(f"next size {size}x{size}: step {t:.1f} s, new graphs {counters['stats']['unique_graphs'] - graphs}",
              flush=True)


if __name__ == "__main__":
    main()
