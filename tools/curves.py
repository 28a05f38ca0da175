"""Deterministic training configs and loss curves: reversible vs plain-autograd training.

Shared by ``tools/compare_curves.py`` (the long run) and the Runner tests (resume,
curve tracking, DDP). The configs derive from the quickstart Faster R-CNN
(``configs/quickstart/faster_rcnn_revbifpn_s0_synthetic.py`` of the checkout) with every
random choice of training removed: no random augmentation, unshuffled data,
PseudoSamplers (no random RoI sampling), no stochastic depth, fixed seed.

Only the standard library is used; the configs are text for ``tools/train.py``.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Dict, Mapping, Optional

__all__ = ["quickstart_config", "deterministic_faster_rcnn", "CURVE_SCHEDULE", "curve_config", "read_losses",
           "max_relative_divergence"]

#: Schedule of the curve runs: logs the loss every iteration, checkpoints every ``ckpt``.
CURVE_SCHEDULE = """
train_cfg = dict(max_iters={iters}, val_interval=100000)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end={total})]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval={ckpt}),
                     logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0, deterministic=True)
"""


def quickstart_config(name: str = "faster_rcnn_revbifpn_s0_synthetic.py") -> str:
    """Path of a quickstart config of this checkout (FileNotFoundError outside a checkout)."""
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "quickstart", name)
    if not osp.isfile(path):
        raise FileNotFoundError(f"quickstart config {path!r} not found: the curve configs derive from the "
                                "configs/ folder of a revbifpn_mm checkout; run from the repository")
    return path


def deterministic_faster_rcnn(data_root: str, backbone: str, batch_size: int, base: Optional[str] = None) -> str:
    """Config text on ``base`` (default: the quickstart Faster R-CNN) without any random choice in
    training: no random augmentation, unshuffled data, PseudoSamplers. ``backbone``: keyword
    arguments of ``model.backbone`` as source text; ``data_root`` ends in ``/``."""
    base = base or quickstart_config()
    return f"""
_base_ = {base!r}
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
    return (deterministic_faster_rcnn(data_root, backbone, batch_size=batch_size)
            + CURVE_SCHEDULE.format(iters=iters, ckpt=ckpt, total=total or iters))


def read_losses(work_dir: str) -> Dict[int, float]:
    """``{iteration: loss}`` from every ``scalars.json`` under ``work_dir`` (a resume writes a second one)."""
    res: Dict[int, float] = {}
    for dirpath, _, files in os.walk(work_dir):
        if "scalars.json" in files:
            with open(osp.join(dirpath, "scalars.json"), encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
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
