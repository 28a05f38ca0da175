"""Gradient fidelity of the reversible backward: reversible vs plain autograd, per arch and BN mode.

    python tools/fidelity.py --archs s0,s3 --size 256 [--device cuda --tf32 off]

Same weights and input, stochastic depth off, loss ``sum(output * fixed random tensor)``, BN frozen and
training. Each measure is ``max |g_a - g_b| / max |g_b|`` over all parameter gradients: reversible vs
plain fp32, reversible vs plain fp64 (the exact gradient), plain fp32 vs fp64 (an ordinary network's own
rounding: the yardstick); plus the gradient cosine under bf16 autocast. The table is docs/fidelity.md's.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Dict, List

import torch
from torch import nn

from bench.models import freeze_bn
from revbifpn_mm.models import RevBiFPN

__all__ = ["grads", "max_rel", "cosine", "randomize_affine_", "run_arch"]


def grads(model: nn.Module, x: torch.Tensor, weights: List[torch.Tensor], amp: bool = False) -> List[torch.Tensor]:
    """Parameter gradients of ``sum(feature * weight)`` over the model's outputs (bf16 autocast if ``amp``)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        feats = model(x)
    sum((f.to(w.dtype) * w).sum() for f, w in zip(feats, weights)).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def max_rel(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    """``max |a - b| / max |b|`` over lists of tensors, computed in float64."""
    gmax = max(t.abs().max().item() for t in b)
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b)) / gmax


def cosine(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    """Cosine between the concatenations of ``a`` and ``b`` (float64)."""
    va = torch.cat([t.flatten().double() for t in a])
    vb = torch.cat([t.flatten().double() for t in b])
    return (va @ vb / (va.norm() * vb.norm())).item()


def randomize_affine_(model: nn.Module, generator: torch.Generator, conv_bias: bool = False) -> nn.Module:
    """Non-trivial affine parameters: every BatchNorm's ``weight ~ U(0.5, 1.5)`` and ``bias ~ 0.2 N(0, 1)``
    (and, with ``conv_bias``, every conv bias ``~ 0.2 N(0, 1)``), drawn from ``generator`` in module order:
    the recipe of the reference fixtures (``../shared/reference/README.md``). A fresh BN (1, 0) would hide
    errors that scale or shift its input.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
            elif conv_bias and isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
    return model


def run_arch(arch: str, size: int, batch: int, device: torch.device, seed: int = 0) -> List[Dict[str, object]]:
    """Fidelity rows (BN frozen, BN training) of one arch at ``batch x 3 x size x size``.

    Args:
        arch: ``'s0'`` ... ``'s6'``.
        size: Input height and width.
        batch: Batch size (BN in training mode needs at least 2).
        device: Where to run.
        seed: Seed of weights, BN statistics, input and loss weights.

    Returns:
        One dict per BN mode with the keys ``arch``, ``bn``, ``rev_vs_plain``, ``rev_vs_fp64``,
        ``plain_vs_fp64``, ``cos_rev_plain`` and, under bf16 autocast, ``bf16_cos_rev_plain``, ``bf16_max_rel``.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    base = randomize_affine_(RevBiFPN(arch, num_classes=0, drop_path_rate=0.0).to(device), g)
    with torch.no_grad():
        base.train()(torch.randn(batch, 3, size, size, generator=g).to(device))  # non-trivial running statistics
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        weights = [torch.randn(f.shape, generator=g).to(device) for f in base.eval()(x)]
    rows = []
    for frozen in (True, False):
        rev = freeze_bn(copy.deepcopy(base), frozen)
        plain = freeze_bn(copy.deepcopy(base), frozen)
        plain.set_memory_mode("plain")
        plain64 = copy.deepcopy(plain).double()
        g_rev = grads(rev, x, weights)
        g_plain = grads(plain, x, weights)
        g64 = grads(plain64, x.double(), [w.double() for w in weights])
        b_rev, b_plain = grads(rev, x, weights, True), grads(plain, x, weights, True)
        rows.append(dict(arch=arch, bn="frozen" if frozen else "train", rev_vs_plain=max_rel(g_rev, g_plain),
                         rev_vs_fp64=max_rel(g_rev, g64), plain_vs_fp64=max_rel(g_plain, g64),
                         cos_rev_plain=cosine(g_rev, g_plain), bf16_cos_rev_plain=cosine(b_rev, b_plain),
                         bf16_max_rel=max_rel(b_rev, b_plain)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="s0,s1,s2,s3,s4,s5,s6")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", choices=("on", "off", "default"), default="default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and args.tf32 != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    rows = []
    for arch in args.archs.split(","):
        rows += run_arch(arch, args.size, args.batch, device)
        print("\n".join(json.dumps(r) for r in rows[-2:]), file=sys.stderr, flush=True)
    head = "| arch | BN | rev vs plain | rev vs fp64 | plain vs fp64 | rev/plain-spread | bf16 cos |"
    print(f"device {device} tf32={args.tf32} input {args.batch}x3x{args.size}x{args.size}\n")
    print(head + "\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['bn']} | {r['rev_vs_plain']:.2e} | {r['rev_vs_fp64']:.2e} | "
              f"{r['plain_vs_fp64']:.2e} | {r['rev_vs_fp64'] / r['plain_vs_fp64']:.2f} | "
              f"{r['bf16_cos_rev_plain']:.6f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), tf32=args.tf32, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
