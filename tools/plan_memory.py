"""Will it fit? Predict the training memory of a detection or segmentation config on a GPU.

    python tools/plan_memory.py configs/faster_rcnn_revbifpn_s3.py --gpu-mem 12 24 80
    python tools/plan_memory.py configs/mmseg/fcn_revbifpn_s2_4xb4-160k_ade20k-512x512.py --amp
    python tools/plan_memory.py CONFIG --shape 512 512 --modes reversible

It builds the config's real model and optimizer and measures short training steps at the
config's training resolution at batch 1 and 2, each in a fresh process (on this machine's
CPU unless --device cuda), then predicts the memory at batch 1, 2, 4, 8 and the largest batch
that fits each --gpu-mem: fixed costs (parameters, gradients, optimizer state) + the step's
working set + batch x the activations per sample, plus a stated allowance for the CUDA
context and the caching allocator. Plain (non-reversible) mode is measured only where it fits
in this machine's memory; otherwise the table says so. See docs/planner.md for the method.
"""
import argparse
import json
import sys

from mmengine.config import DictAction

from revbifpn_mm.mm import planner


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("config", help="an mmdet or mmseg config file")
    ap.add_argument("--gpu-mem", type=float, nargs="+", default=[24.0], metavar="GB",
                    help="GPU memory in GB (decimal) to plan for; several allowed (default 24)")
    ap.add_argument("--amp", action="store_true",
                    help="mixed precision: measured under bfloat16 autocast on CPU (float16 on CUDA)")
    ap.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="input height and width (default: the config's training resolution)")
    ap.add_argument("--quick", action="store_true", help="a smoke run at 256x256 (not a plan for the config)")
    ap.add_argument("--modes", default="reversible,plain", help="comma list of reversible, plain")
    ap.add_argument("--device", default="cpu", help="where to measure: cpu (default) or cuda")
    ap.add_argument("--context-gb", type=float, default=planner.CONTEXT_GB,
                    help=f"allowance for the CUDA context (default {planner.CONTEXT_GB})")
    ap.add_argument("--fragmentation", type=float, default=planner.FRAGMENTATION,
                    help=f"allowance for the caching allocator, fraction of the peak (default {planner.FRAGMENTATION})")
    ap.add_argument("--ram-fraction", type=float, default=0.6,
                    help="share of the available RAM one CPU measurement may use (default 0.6)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the measuring processes")
    ap.add_argument("--json", default=None, help="also write the measurements and predictions here")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, help="config overrides, key=value")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shape = (256, 256) if args.quick and args.shape is None else args.shape
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in planner.MODES]
    if bad:
        print(f"error: unknown mode(s) {bad}; use reversible and/or plain", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
    try:
        plan = planner.make_plan(args.config, shape=shape, amp=args.amp, modes=modes, device=args.device,
                                 cfg_options=args.cfg_options, ram_fraction=args.ram_fraction, threads=args.threads,
                                 log=lambda msg: print(f"[plan_memory] {msg}", file=sys.stderr, flush=True))
    except planner.PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(planner.render_plan(plan, args.gpu_mem, context_gb=args.context_gb, fragmentation=args.fragmentation))
    if args.json:
        out = dict(config=plan.config, shape=plan.shape, amp=plan.amp, device=plan.device,
                   context_gb=args.context_gb, fragmentation=args.fragmentation, modes=[])
        for m in plan.modes:
            row = dict(mode=m.mode, skipped=m.skipped, probes=[vars(p) for p in m.probes])
            if m.measured:
                row.update(fixed_bytes=m.fixed_bytes, per_sample_bytes=m.per_sample_bytes,
                           predicted_gb={b: m.on_gpu(b, args.context_gb, args.fragmentation) / 1e9
                                         for b in planner.BATCHES},
                           largest_batch={g: m.largest_batch(g * 1e9, args.context_gb, args.fragmentation)
                                          for g in args.gpu_mem})
            out["modes"].append(row)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
