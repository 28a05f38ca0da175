"""Where the time of a detector training step goes, side by side (CPU or CUDA).

    python tools/profile_step.py                                   # Faster R-CNN, 800x1344, batch 1
    python tools/profile_step.py --backbones revbifpn_s3,hrnetv2p_w18 --height 416 --width 672

Builds the detectors first (RevBiFPN reversible and plain, the baselines with and without
``with_cp``), then steps them in turn for ``--rounds`` rounds and prints, for each one's
fastest step, the seconds of backbone / neck / heads in the forward and in the backward, read
from torch.profiler (``tools/phases.py``). The RevBiFPN backbone's backward contains its
recomputation: reversible minus plain is what the recomputation costs.
"""
import argparse
import json
import os

import torch

from bench import models as M
from phases import PHASES, interleaved_phases


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
    device = torch.device("cpu")
    models = {}
    for bb in args.backbones.split(","):
        variants = [("reversible", None), ("plain", None)] if bb.startswith("revbifpn") else [(None, False), (None, True)]
        for mode, cp in variants:
            torch.manual_seed(0)
            model = M.detector(args.kind, bb, bool(cp), **(dict(memory_mode=mode) if mode else {})).train()
            run = M.detector_run(model, 1, args.height, args.width, device)
            models[f"{bb} {mode or ('with_cp' if cp else 'plain')}"] = (model, run)
    res = interleaved_phases(models, rounds=args.rounds)
    head = f"{'detector (' + args.kind + ' R-CNN, s)':34s}" + "".join(f"{p:>13s}" for p in PHASES)
    print(head)
    for name, r in res.items():
        print(f"{name:34s}" + "".join(f"{r[p]:13.2f}" for p in PHASES))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(shape=[args.height, args.width], threads=torch.get_num_threads(), rows=res), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
