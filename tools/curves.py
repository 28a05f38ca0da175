"""Deterministic training runs: reversible vs plain-autograd loss curves (docs/fidelity.md).

The configs derive from the quickstart Faster R-CNN with every random choice of training removed;
the Runner tests (resume, curve tracking, DDP) use them too. The long run trains it three times,
one CPU thread each: reversible, plain, and plain with float32 residual streams (the yardstick).

    python tools/curves.py --iters 300 --work-dir work_dirs/curves
    python tools/curves.py --dry-run   # only the dataset and the three configs
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import pathlib
import subprocess
import sys
from typing import Dict, Mapping, Optional

from synthetic_data import generate_synthetic_coco

__all__ = ["deterministic_faster_rcnn", "curve_config", "read_losses", "max_relative_divergence"]

TOOLS = osp.dirname(osp.abspath(__file__))
QUICKSTART = osp.join(osp.dirname(TOOLS), "configs", "quickstart", "faster_rcnn_revbifpn_s0_synthetic.py")
RUNS = (("rev", "reversible", "auto"), ("plain", "plain", "auto"), ("plain32", "plain", "float32"))


def deterministic_faster_rcnn(data_root: str, backbone: str, batch_size: int) -> str:
    """Config text of the quickstart Faster R-CNN without any random choice in training: no random
    augmentation, unshuffled data, PseudoSamplers. ``backbone``: keyword arguments of ``model.backbone``
    as source text; ``data_root`` ends in ``/``."""
    return f"""
_base_ = {QUICKSTART!r}
data_root = {data_root!r}
model = dict(
    backbone=dict({backbone}),
    train_cfg=dict(rpn=dict(sampler=dict(_delete_=True, type='PseudoSampler')),
                   rcnn=dict(sampler=dict(_delete_=True, type='PseudoSampler'))))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs')]
train_dataloader = dict(batch_size={batch_size}, sampler=dict(type='InfiniteSampler', shuffle=False),
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
"""


def curve_config(data_root: str, iters: int, ckpt: int, mode: str = "reversible", stream: str = "auto",
                 total: Optional[int] = None, batch_size: int = 2) -> str:
    """Config text of one deterministic curve run (RevBiFPN-S0 Faster R-CNN, stochastic depth off) of
    ``iters`` iterations, a checkpoint every ``ckpt``, the backbone's ``memory_mode`` and
    ``stream_dtype``; ``total`` is the warm-up schedule's length (default ``iters``; a run cut short
    for a resume test passes the uninterrupted run's)."""
    backbone = f"drop_path_rate=0.0, memory_mode={mode!r}, stream_dtype={stream!r}"
    return deterministic_faster_rcnn(data_root, backbone, batch_size=batch_size) + f"""
train_cfg = dict(max_iters={iters}, val_interval=100000)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end={total or iters})]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval={ckpt}),
                     logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0, deterministic=True)
"""


def read_losses(work_dir: str) -> Dict[int, float]:
    """``{iteration: loss}`` from every ``scalars.json`` under ``work_dir`` (a resume adds one; the later run wins)."""
    res: Dict[int, float] = {}
    for path in sorted(pathlib.Path(work_dir).rglob("scalars.json")):
        for rec in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
            if "loss" in rec and "iter" in rec:
                res[rec["iter"]] = rec["loss"]
    return res


def max_relative_divergence(curve: Mapping[int, float], ref: Mapping[int, float]) -> float:
    """``max_i |curve[i] - ref[i]| / |ref[i]|`` over the iterations of ``ref`` (ValueError where
    ``curve`` lacks some: a run stopped early)."""
    missing = sorted(set(ref) - set(curve))
    if missing:
        raise ValueError(f"the curve lacks iterations {missing[:5]}{'...' if len(missing) > 5 else ''} "
                         "of the reference: did the run stop early?")
    return max(abs(curve[i] - ref[i]) / abs(ref[i]) for i in ref)


def _train_losses(cfg: str, work: str) -> Dict[int, float]:
    out = subprocess.run([sys.executable, osp.join(TOOLS, "train.py"), cfg, "--work-dir", work],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"training {cfg} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return read_losses(work)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--work-dir", default="work_dirs/curves")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--dry-run", action="store_true",
                    help="generate the dataset and write the three configs, but do not train")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.images < 1:
        ap.error("--iters and --images must be positive")
    work = pathlib.Path(args.work_dir).resolve()
    data = work / "synthetic_coco"
    generate_synthetic_coco(str(data), num_train=args.images, num_val=2, image_size=(128, 128), seed=5)
    for name, mode, stream in RUNS:
        (work / f"{name}.py").write_text(curve_config(str(data) + "/", args.iters, args.iters, mode, stream))
    if args.dry_run:
        print("configs: " + " ".join(str(work / f"{name}.py") for name, _, _ in RUNS))
        return 0
    curves = {}
    for name, _, _ in RUNS:
        print(f"training {name} ({args.iters} iterations) ...", flush=True)
        curves[name] = _train_losses(str(work / f"{name}.py"), str(work / name))
    res = {name: max_relative_divergence(curves[name], curves["plain"]) for name in ("rev", "plain32")}
    print(f"max relative loss divergence vs plain over {args.iters} iterations: "
          f"reversible {res['rev']:.3e}, plain with float32 streams {res['plain32']:.3e}")
    step = max(1, args.iters // 6)
    print("| iterations | plain | reversible | plain (fp32 streams) |\n|---|---|---|---|")
    for a in range(1, args.iters + 1, step):
        b = min(a + step - 1, args.iters)
        m = {n: sum(curves[n][i] for i in range(a, b + 1)) / (b - a + 1) for n in curves}
        print(f"| {a}-{b} | {m['plain']:.4f} | {m['rev']:.4f} | {m['plain32']:.4f} |")
    (work / "curves.json").write_text(json.dumps(curves))
    return 0


if __name__ == "__main__":
    sys.exit(main())
