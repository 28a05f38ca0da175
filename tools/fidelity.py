"""Gradient fidelity of the reversible backward: reversible vs plain autograd, per size and BN mode.

For each arch: same weights, same input (batch 2 x 3 x 256 x 256 by default), training mode,
stochastic depth off, loss = sum(output * fixed random tensor). Reports
``max |g_a - g_b| / max |g_b|`` over all parameter gradients for

* reversible fp32 vs plain fp32        (the reversible error),
* reversible fp32 vs plain fp64        (error against the exact gradient),
* plain fp32 vs plain fp64             (an ordinary network's own rounding spread: the yardstick),

with BN frozen (``norm_eval``, the detection setting) and in training mode, plus the
gradient cosine under bf16 autocast (reversible vs plain). On CUDA, ``--tf32 on|off``.

    python tools/fidelity.py --archs s0,s3 --size 256
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Dict, List

import torch
from torch import nn

from revbifpn_mm.models import RevBiFPN


def grads(model: nn.Module, x: torch.Tensor, weights: List[torch.Tensor], amp: bool = False) -> List[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        feats = model(x)
    sum((f.to(w.dtype) * w).sum() for f, w in zip(feats, weights)).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def max_rel(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    gmax = max(t.abs().max().item() for t in b)
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b)) / gmax


def cosine(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    va = torch.cat([t.flatten().double() for t in a])
    vb = torch.cat([t.flatten().double() for t in b])
    return (va @ vb / (va.norm() * vb.norm())).item()


def set_bn(model: nn.Module, frozen: bool) -> None:
    model.train()
    if frozen:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def run_arch(arch: str, size: int, batch: int, device: torch.device, seed: int = 0,
             with_bf16: bool = True) -> List[Dict[str, object]]:
    torch.manual_seed(seed)
    base = RevBiFPN(arch, num_classes=0, drop_path_rate=0.0).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
        for m in base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        base.train()
        base(torch.randn(batch, 3, size, size, generator=g).to(device))  # calibrate running stats
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        shapes = [f.shape for f in base.eval()(x)]
    weights = [torch.randn(s, generator=g).to(device) for s in shapes]
    rows = []
    for frozen in (True, False):
        rev = copy.deepcopy(base)
        plain = copy.deepcopy(base)
        plain.set_memory_mode("plain")
        plain64 = copy.deepcopy(plain).double()
        for m in (rev, plain, plain64):
            set_bn(m, frozen)
        g_rev = grads(rev, x, weights)
        g_plain = grads(plain, x, weights)
        g64 = grads(plain64, x.double(), [w.double() for w in weights])
        row = dict(arch=arch, bn="frozen" if frozen else "train", rev_vs_plain=max_rel(g_rev, g_plain),
                   rev_vs_fp64=max_rel(g_rev, g64), plain_vs_fp64=max_rel(g_plain, g64),
                   cos_rev_plain=cosine(g_rev, g_plain))
        if with_bf16:
            row["bf16_cos_rev_plain"] = cosine(grads(rev, x, weights, True), grads(plain, x, weights, True))
            row["bf16_max_rel"] = max_rel(grads(rev, x, weights, True), grads(plain, x, weights, True))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


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
    rows = []
    for arch in args.archs.split(","):
        rows += run_arch(arch, args.size, args.batch, device, with_bf16=not args.no_bf16)
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
