"""GPU measurements and checks that are not a benchmark suite (run by tools/gpu_measurements.sh).

    python tools/gpu_experiments.py checks   --out OUT.json   # RNG replay and mixed precision on CUDA
    python tools/gpu_experiments.py overhead --out OUT.json   # the seed's recomputation-overhead table
    python tools/gpu_experiments.py graphs   --out OUT.json   # S3 backbone + neck step under CUDA graphs
    python tools/gpu_experiments.py graphs --compile-transforms --out OUT.json  # the same, transforms compiled

Each writes its JSON as soon as each row is measured; ``--device cpu --tiny`` runs the same code at a
tiny size (how the tests check it). docs/benchmarks.md describes the measurements. graphs recomputes the
tail plainly: a lean MBConv's checkpoint stashes the RNG state, which a capture cannot.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any, Callable, Dict, List

import torch

from bench import models as M
from bench.measure import interleaved_min_times
from fidelity import cosine, max_rel
from revbifpn_mm.models import RevBiFPN


def checks(device: torch.device, size: int, emit: Callable[[Dict[str, Any]], None]) -> None:
    torch.manual_seed(0)
    rev = RevBiFPN("s0", num_classes=0, drop_path_rate=0.5).to(device).double().train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(2, 3, size, size, device=device, dtype=torch.float64)
    gs = []
    for m in (rev, plain):
        torch.manual_seed(7)  # seeds CPU and CUDA generators
        a, b = m(x), m(x)  # two forwards before one backward: each call replays its own masks
        (sum(f.sum() for f in a) + 2 * sum(f.sum() for f in b)).backward()
        gs.append([p.grad for p in m.parameters()])
    err = max_rel(*gs)
    emit(dict(check="rng_replay_fp64", max_rel=err, ok=err < 1e-9))
    for arch in ("s0", "s3"):
        torch.manual_seed(0)
        base = RevBiFPN(arch, num_classes=0).to(device).train()
        x = torch.randn(2, 3, size, size, device=device)
        w = [torch.randn_like(f) for f in base.eval()(x)]
        base.train()
        row: Dict[str, Any] = dict(check=f"amp_{arch}")
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            grads = []
            for mode in ("reversible", "plain"):
                m = copy.deepcopy(base)
                m.set_memory_mode(mode)
                opt = torch.optim.SGD(m.parameters(), lr=1e-3)
                scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
                finite = True
                torch.manual_seed(1)  # the same stochastic-depth masks in both memory modes
                for step in range(3):
                    opt.zero_grad()
                    with torch.autocast(device.type, dtype=dtype):
                        feats = m(x)
                    loss = sum((f.float() * wi).mean() for f, wi in zip(feats, w))
                    scaler.scale(loss).backward()
                    if step == 0:
                        grads.append([p.grad / scaler.get_scale() for p in m.parameters()])
                    finite &= bool(torch.isfinite(loss).item())
                    scaler.step(opt)
                    scaler.update()
                row[f"{name}_{mode}_finite"] = finite
            row[f"{name}_cos_rev_plain"] = cosine(*grads)
        emit(row)


def overhead(device: torch.device, archs: List[str], size: int, batch: int, rounds: int,
             emit: Callable[[Dict[str, Any]], None]) -> None:
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    for arch in archs:
        steps = {}
        for mode in ("reversible", "plain"):
            torch.manual_seed(0)
            m = RevBiFPN(arch, num_classes=1000, memory_mode=mode).to(device).train()

            def step(m: torch.nn.Module = m) -> None:
                torch.nn.functional.cross_entropy(m(x), y).backward()
                m.zero_grad(set_to_none=True)
            step()
            steps[mode] = step
        best = interleaved_min_times(steps, rounds, device)
        emit(dict(arch=arch, reversible_s=best["reversible"], plain_s=best["plain"],
                  slowdown_pct=100 * (best["reversible"] / best["plain"] - 1), input=[batch, 3, size, size]))
        del steps


def graphs(device: torch.device, arch: str, batch: int, h: int, w: int, rounds: int,
           emit: Callable[[Dict[str, Any]], None], compile_transforms: bool = False) -> None:
    torch.manual_seed(0)
    eager = M.freeze_bn(M.torch_backbone_neck(f"revbifpn_{arch}", drop_path_rate=0.0, lean_recompute=False,
                                              compile_transforms=compile_transforms).to(device), True)
    graphed_model = copy.deepcopy(eager)
    x = M.image(batch, h, w, device)
    weights = [torch.randn_like(o) for o in eager(x)]

    def loss_of(outs: Any) -> torch.Tensor:
        return sum((o * wo).sum() for o, wo in zip(outs, weights))

    row: Dict[str, Any] = dict(experiment="cuda_graphs", arch=arch, input=[batch, 3, h, w],
                               compile_transforms=compile_transforms)
    try:
        graphed = torch.cuda.make_graphed_callables(graphed_model, (x,), num_warmup_iters=3)
    except Exception as err:  # noqa: BLE001  (what blocks capture is the finding)
        row.update(captured=False, error=f"{type(err).__name__}: {' '.join(str(err).split())[:400]}")
        emit(row)
        return

    def step_of(model: torch.nn.Module, fn: Callable) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=False)
            loss_of(fn(x)).backward()
        return step
    steps = {"eager": step_of(eager, eager), "graphed": step_of(graphed_model, graphed)}
    grads = []
    for model, step in zip((eager, graphed_model), steps.values()):
        step()
        grads.append([p.grad.detach().clone() for p in model.parameters() if p.grad is not None])
    row.update(captured=True, max_rel_grad_diff=max_rel(grads[1], grads[0]),
               same_grad_count=len(grads[0]) == len(grads[1]))
    best = interleaved_min_times(steps, rounds, device)
    row.update(eager_step_s=best["eager"], graphed_step_s=best["graphed"], speedup=best["eager"] / best["graphed"])
    emit(row)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("checks", "overhead", "graphs"))
    ap.add_argument("--out", required=True, help="JSON file")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--archs", default="s0,s2,s4,s6", help="overhead: RevBiFPN sizes")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tiny", action="store_true", help="tiny inputs (a check of the code paths, not a measurement)")
    ap.add_argument("--compile-transforms", action="store_true",
                    help="graphs: the backbone with compile_transforms=True (fixed shape), eager vs captured")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows: List[Dict[str, Any]] = []
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def emit(row: Dict[str, Any]) -> None:
        rows.append(row)
        with open(args.out, "w") as f:
            json.dump(dict(meta, rows=rows), f, indent=1, default=float)
        print(json.dumps(row, default=float), flush=True)
    if args.what == "checks":
        checks(device, 64 if args.tiny else 256, emit)
    elif args.what == "overhead":
        overhead(device, args.archs.split(","), 64 if args.tiny else 224, 4, args.rounds, emit)
    elif device.type != "cuda":
        emit(dict(experiment="cuda_graphs", captured=False, error="needs a CUDA device"))
    else:
        graphs(device, "s3", 2, *((128, 128) if args.tiny else (800, 1344)), args.rounds, emit,
               args.compile_transforms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
