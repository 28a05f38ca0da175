"""Gradient fidelity of the reversible backward: reversible vs plain autograd (torch only).

Used by ``tools/fidelity.py`` (the table per size and BN mode) and the fidelity tests.
For an arch: same weights, same input, training mode, stochastic depth off, loss =
``sum(output * fixed random tensor)``. :func:`run_arch` reports
``max |g_a - g_b| / max |g_b|`` over all parameter gradients for

* reversible fp32 vs plain fp32        (the reversible error),
* reversible fp32 vs plain fp64        (error against the exact gradient),
* plain fp32 vs plain fp64             (an ordinary network's own rounding spread: the yardstick),

with BN frozen (``norm_eval``, the detection setting) and in training mode, plus the
gradient cosine under bf16 autocast (reversible vs plain).
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..models import RevBiFPN

__all__ = ["grads", "max_rel", "cosine", "set_bn", "run_arch"]


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


def set_bn(model: nn.Module, frozen: bool) -> None:
    """Training mode; with ``frozen`` the BN layers use their running statistics (``norm_eval``)."""
    model.train()
    if frozen:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def run_arch(arch: str, size: int, batch: int, device: torch.device, seed: int = 0, with_bf16: bool = True,
             report: Optional[Callable[[Dict[str, object]], None]] = None) -> List[Dict[str, object]]:
    """Fidelity rows (BN frozen, BN training) of one arch at ``batch x 3 x size x size``.

    Args:
        arch: ``'s0'`` ... ``'s6'``.
        size: Input height and width.
        batch: Batch size (BN in training mode needs at least 2).
        device: Where to run.
        seed: Seed of weights, BN statistics, input and loss weights.
        with_bf16: Also compare gradients under bf16 autocast.
        report: Called with each row as soon as it is measured (e.g. to log progress).

    Returns:
        One dict per BN mode with the keys ``arch``, ``bn``, ``rev_vs_plain``,
        ``rev_vs_fp64``, ``plain_vs_fp64``, ``cos_rev_plain`` (and ``bf16_cos_rev_plain``,
        ``bf16_max_rel`` with ``with_bf16``).
    """
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
        if report is not None:
            report(row)
    return rows
