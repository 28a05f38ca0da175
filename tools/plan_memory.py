"""Will it fit, and how to train it? The training memory of a detection or segmentation config on a GPU.

    python tools/plan_memory.py configs/faster_rcnn_revbifpn_s3.py --gpu-mem 12 24 80
    python tools/plan_memory.py configs/mmseg/fcn_revbifpn_s2_4xb4-160k_ade20k-512x512.py --amp
    python tools/plan_memory.py CONFIG --shape 512 512 --modes reversible
    python tools/plan_memory.py configs/mask_rcnn_revbifpn_s3.py --gpu-mem 12 --instances 300

It measures short training steps of the config's real model and optimizer, each in a fresh process
(fully reversible at batch 1 and 2, every plain_segments setting at batch 1, plain mode where it fits;
detectors with the data's most instances per image), predicts the memory of any batch and setting with
a stated allowance, and prints per card the largest fully reversible batch and the setting to train
with at the config's batch, each with its command. See docs/planner.md.
"""
import argparse
import json
import sys
from dataclasses import asdict

import torch
from mmengine.config import DictAction

import planner
from dataset_stats import read_dataset_stats

ASSUMED_INSTANCES = 100
"""Instances per image measured with when no annotations can be read (a dense image; COCO averages about 7)."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("config", help="an mmdet or mmseg config file")
    ap.add_argument("--gpu-mem", type=float, nargs="+", default=[24.0], metavar="GIB",
                    help="GPU memory in GiB to plan for (as nvidia-smi counts it); several allowed (default 24)")
    ap.add_argument("--amp", action="store_true",
                    help="mixed precision: measured under bfloat16 autocast on CPU (float16 on CUDA)")
    ap.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="input height and width (default: the config's training resolution)")
    ap.add_argument("--modes", default="reversible,plain_segments,plain",
                    help="what to measure: comma list of reversible, plain_segments, plain (default all)")
    ap.add_argument("--device", default="cpu", help="where to measure: cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the measuring processes")
    ap.add_argument("--instances", type=int, default=None, metavar="N",
                    help="detectors: ground-truth instances per image to measure with (default: the most of any "
                         f"training image in the config's annotations, else {ASSUMED_INSTANCES})")
    ap.add_argument("--json", default=None, help="also write the measurements and predictions here")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, help="config overrides, key=value")
    return ap.parse_args(argv)


def instances_to_plan(cfg, override=None):
    """``(instances, where from, mask format, box sides)`` to measure a detector with: ``override``, else the
    most instances of any training image (an epoch meets every image, so a plan for the 95th percentile
    would run out of memory within the first epoch), else :data:`ASSUMED_INSTANCES`; the boxes at the
    data's sizes (``DatasetStats.box_sides``) where the annotations were read, else ``None``."""
    stats, why = read_dataset_stats(cfg)
    fmt, sides = (stats.mask_format, stats.box_sides or None) if stats else ("bitmap", None)
    if override is not None:
        return override, "--instances", fmt, sides
    if stats is not None:
        return stats.instances_max, "the most of any training image; " + stats.describe(), fmt, sides
    return ASSUMED_INSTANCES, f"assumed, no annotations read: {why}; pass --instances N", fmt, None


def main(argv=None):
    args = parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if "budgets" in modes:  # the earlier name of plain_segments
        print("warning: --modes budgets is now called plain_segments", file=sys.stderr)
        modes = ["plain_segments" if m == "budgets" else m for m in modes]

    def log(msg):
        print(f"[plan_memory] {msg}", file=sys.stderr, flush=True)
    try:
        bad = [m for m in modes if m not in planner.MODES]
        if bad:
            raise planner.PlanError(f"unknown mode(s) {bad}; use {', '.join(planner.MODES)}")
        if args.instances is not None and args.instances < 1:
            raise planner.PlanError(f"--instances must be at least 1, got {args.instances}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise planner.PlanError("--device cuda but torch sees no CUDA device")
        cfg = planner.load_config(args.config, args.cfg_options)
        hw = tuple(args.shape) if args.shape else planner.training_shape(cfg)[:2]
        if args.device == "cpu":
            seconds = planner.expected_seconds(args.config, hw, modes, args.cfg_options)
            log(f"expected wall time on this CPU: about {max(1, round(seconds / 60))} min ({', '.join(modes)} at "
                f"{hw[0]}x{hw[1]})")
        instances, source, fmt, sides = instances_to_plan(cfg, args.instances)
        plan = planner.make_plan(args.config, shape=args.shape, amp=args.amp, modes=modes, device=args.device,
                                 cfg_options=args.cfg_options, threads=args.threads, log=log,
                                 instances=instances, instances_source=source, mask_format=fmt, box_sides=sides)
    except planner.PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(planner.render_plan(plan, args.gpu_mem))
    if args.json:
        rev = plan.reversible
        cards = {gib: dict(largest_batch=rev.largest_batch(gib * planner.GIB, assign_on_cpu=plan.assign_on_cpu),
                           plain_segments_at_config_batch=plan.best_plain_segments(gib * planner.GIB, plan.batch))
                 for gib in args.gpu_mem if rev is not None}
        out = dict(asdict(plan), plain_segments=plan.plain_segments, context_gib=planner.CONTEXT_GIB,
                   fragmentation=planner.FRAGMENTATION, cards=cards, gt_bytes=plan.gt_bytes,
                   suggested_assign_thr=plan.suggested_assign_thr())
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
