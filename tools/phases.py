"""Where the time of a detector training step goes: backbone, neck and heads, forward and backward.

    python tools/phases.py                                   # Faster R-CNN, 800x1344, batch 1
    python tools/phases.py --backbones revbifpn_s3,hrnetv2p_w18 --height 416 --width 672

Builds the detectors (RevBiFPN reversible and plain, the baselines with and without ``with_cp``),
steps them in turn for ``--rounds`` rounds and prints each one's fastest step by phase. The RevBiFPN
backbone's backward contains its recomputation: reversible minus plain is what it costs.

Read from ``torch.profiler``: forward pre/post hooks on the detector's ``backbone`` and ``neck``
open and close a ``record_function`` region around each; every op recorded inside a region carries
the sequence number of the autograd node it creates, and the backward's top-level
``evaluate_function`` events carry the sequence number of the node they run. So

* forward: backbone and neck are their regions; heads (RPN, RoI, losses) = the rest of the forward;
* backward: backbone and neck are the backward nodes created in their regions (a reversible
  backbone's recomputation runs inside its segments' nodes); heads = the rest of the backward.

Host (CPU) times: on CUDA, run with ``CUDA_LAUNCH_BLOCKING=1`` for a meaningful split.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable, Dict, Mapping, Sequence

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from bench import models as M
from bench.measure import training_loss

__all__ = ["PHASES", "time_phases", "interleaved_phases"]

PHASES = ("backbone_fwd", "neck_fwd", "heads_fwd", "heads_bwd", "neck_bwd", "backbone_bwd", "step")
_REGIONS = ("backbone", "neck")


def _region(event: Any) -> str:
    while event is not None:
        if event.name in _REGIONS:
            return event.name
        event = event.cpu_parent
    return ""


def time_phases(model: nn.Module, run: Callable[[], Any]) -> Dict[str, float]:
    """Seconds spent in each phase of one training step (see the module docstring).

    Args:
        model: the detector (``backbone`` and ``neck`` children).
        run: computes its loss dict (e.g. ``lambda: model.loss(inputs, samples)``).

    Returns:
        ``{phase: seconds}`` for :data:`PHASES`; the phases add up to ``step``.
    """
    open_regions: Dict[str, Any] = {}
    handles = []
    for name in _REGIONS:
        mod = getattr(model, name)

        def pre(m: nn.Module, args: Any, name: str = name) -> None:
            open_regions[name] = record_function(name).__enter__()

        def post(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            open_regions.pop(name).__exit__(None, None, None)
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            loss = training_loss(run())
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
    finally:
        for h in handles:
            h.remove()
    events = prof.events()
    res = {f"{r}_fwd": 0.0 for r in _REGIONS} | {f"{r}_bwd": 0.0 for r in _REGIONS}
    seqs: Dict[int, str] = {}
    for e in events:
        if e.name in _REGIONS:
            res[f"{e.name}_fwd"] += e.time_range.elapsed_us() / 1e6
        elif e.sequence_nr >= 0 and not e.name.startswith("autograd::engine") and _region(e):
            seqs[e.sequence_nr] = _region(e)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function") and e.cpu_parent is None and e.sequence_nr in seqs:
            res[f"{seqs[e.sequence_nr]}_bwd"] += e.time_range.elapsed_us() / 1e6
    res["heads_fwd"] = (t1 - t0) - res["backbone_fwd"] - res["neck_fwd"]
    res["heads_bwd"] = (t2 - t1) - res["backbone_bwd"] - res["neck_bwd"]
    res["step"] = t2 - t0
    return {k: res[k] for k in PHASES}


def interleaved_phases(models: Mapping[str, Sequence[Any]], rounds: int = 3) -> Dict[str, Dict[str, float]]:
    """:func:`time_phases` of several detectors, stepped in turn for ``rounds`` rounds.

    Args:
        models: name -> ``(model, run)``; each is warmed up with one untimed step first.
        rounds: timed rounds; the round with the shortest whole step is kept per model.

    Returns:
        name -> phases of that model's fastest step.
    """
    for model, run in models.values():
        training_loss(run()).backward()
        model.zero_grad(set_to_none=True)
    best: Dict[str, Dict[str, float]] = {}
    for _ in range(rounds):
        for name, (model, run) in models.items():
            res = time_phases(model, run)
            model.zero_grad(set_to_none=True)
            if name not in best or res["step"] < best[name]["step"]:
                best[name] = res
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="revbifpn_s3,hrnetv2p_w18,r101_fpn")
    ap.add_argument("--kind", default="faster", choices=("faster", "mask"))
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1344)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {}
    for bb in args.backbones.split(","):
        rev = bb.startswith("revbifpn")
        for label in ("reversible", "plain") if rev else ("plain", "with_cp"):
            kw = dict(memory_mode=label) if rev else dict(with_cp=label == "with_cp")
            build = M.builder(lambda: M.detector(args.kind, bb, **kw), 1, args.height, args.width, torch.device("cpu"),
                              False, M.detector_run)
            models[f"{bb} {label}"] = build()
    res = interleaved_phases(models, rounds=args.rounds)
    print(f"{'detector (' + args.kind + ' R-CNN, s)':34s}" + "".join(f"{p:>13s}" for p in PHASES))
    for name, r in res.items():
        print(f"{name:34s}" + "".join(f"{r[p]:13.2f}" for p in PHASES))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(shape=[args.height, args.width], threads=torch.get_num_threads(), rows=res), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
