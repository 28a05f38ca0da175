"""Gradient fidelity of the reversible backward: reversible vs plain autograd, per size and BN mode.

For each arch: same weights, same input (batch 2 x 3 x 256 x 256 by default), training mode,
stochastic depth off, loss = sum(output * fixed random tensor). Reports
``max |g_a - g_b| / max |g_b|`` over all parameter gradients for

* reversible fp32 vs plain fp32        (the reversible error),
* reversible fp32 vs plain fp64        (error against the exact gradient),
* plain fp32 vs plain fp64             (an ordinary network's own rounding spread: the yardstick),

with BN frozen (``norm_eval``, the detection setting) and in training mode, plus the
gradient cosine under bf16 autocast (reversible vs plain). On CUDA, ``--tf32 on|off``.
The measurement itself is :func:`revbifpn_mm.tooling.fidelity.run_arch`.

    python tools/fidelity.py --archs s0,s3 --size 256
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from revbifpn_mm.tooling.fidelity import run_arch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="s0,s1,s2,s3,s4,s5,s6")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", choices=("on", "off", "default"), default="default")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and args.tf32 != "default":
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"

    def report(row):
        print(json.dumps(row), file=sys.stderr, flush=True)

    rows = []
    for arch in args.archs.split(","):
        rows += run_arch(arch, args.size, args.batch, device, with_bf16=not args.no_bf16, report=report)
    head = "| arch | BN | rev vs plain | rev vs fp64 | plain vs fp64 | rev/plain-spread | bf16 cos |"
    print(f"device {device} tf32={args.tf32} input {args.batch}x3x{args.size}x{args.size}\n")
    print(head + "\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['bn']} | {r['rev_vs_plain']:.2e} | {r['rev_vs_fp64']:.2e} | "
              f"{r['plain_vs_fp64']:.2e} | {r['rev_vs_fp64'] / r['plain_vs_fp64']:.2f} | "
              f"{r.get('bf16_cos_rev_plain', float('nan')):.6f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), tf32=args.tf32, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
