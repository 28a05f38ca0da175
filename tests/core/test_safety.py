"""Safety rails of the reversible core: no silent wrong gradient, on any supported torch.

Double backward, the engine-query fallback, RNG replay after module swaps, and
normalisation layers other than BatchNorm.
"""
import copy
import math
import warnings

import pytest
import torch
from torch import nn

from revbifpn_mm.core import RecomputedPerScale, RevBlockGroup, RevResidualBlock, RevSequential
from revbifpn_mm.models import RevBiFPN


def body(c=2, norm=None, extra=None):
    """conv -> [norm] -> tanh [-> extra]: smooth, with a non-zero second derivative."""
    layers = [nn.Conv2d(c, c, 3, padding=1)] + ([norm] if norm is not None else []) + [nn.Tanh()]
    return nn.Sequential(*layers, extra if extra is not None else nn.Identity())


def container(norm=None, mode="reversible", extra=None, tail=False):
    """Two scales, two reversible ops (a block per scale each), optionally a recomputed tail."""
    def blk(c):
        return RevResidualBlock(body(c // 2, norm(c // 2) if norm else None, extra() if extra else None),
                                body(c // 2, norm(c // 2) if norm else None), c)
    ops = [RevBlockGroup([blk(4), blk(6)]), RevBlockGroup([blk(4), blk(6)])]
    return RevSequential(ops, RecomputedPerScale([body(4), body(6)]) if tail else None, memory_mode=mode)


def xs(batch=2, size=6, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size >> h, size >> h, generator=g, dtype=dtype).requires_grad_(grad)
            for h, c in enumerate((4, 6))]


def weighted_loss(outs):
    return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)


# ------------------------------------------------------------------ double backward
@pytest.mark.parametrize("wrt", ["input", "params"])
def test_double_backward_raises_in_reversible_mode(wrt):
    torch.manual_seed(0)
    seq = container().double().train()
    x = xs()
    loss = weighted_loss(seq(x))
    targets = x if wrt == "input" else list(seq.parameters())
    with pytest.raises(RuntimeError, match=r"double backward.*memory_mode='plain'"):
        torch.autograd.grad(loss, targets, create_graph=True)


def test_first_order_backward_still_works_after_the_check():
    torch.manual_seed(0)
    rev = container().double().train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    grads = []
    for m in (rev, plain):
        x = xs()
        weighted_loss(m(x)).backward()
        grads.append([t.grad for t in x] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_plain_mode_supports_a_gradient_penalty():
    """memory_mode='plain': the second-order term exists, changes the step, and is exact (gradgradcheck)."""
    torch.manual_seed(0)
    seq = container(mode="plain").double().train()
    x = xs()
    params = list(seq.parameters())
    loss = weighted_loss(seq(x))
    gx = torch.autograd.grad(loss, x, create_graph=True)
    penalty = sum(g.pow(2).sum() for g in gx)
    pen_grads = torch.autograd.grad(penalty, params)
    assert max(g.abs().max().item() for g in pen_grads) > 0  # the penalty reaches the parameters
    # second derivatives of the plain container against finite differences (a small input keeps it fast)
    small = [t.detach()[:1, :, :4, :4].clone().requires_grad_() for t in x]
    assert torch.autograd.gradgradcheck(lambda a, b: seq([a, b]), small, eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------------- RNG replay after a module swap
@pytest.mark.parametrize("dropout", [nn.Dropout, nn.Dropout2d])
def test_rng_replay_sees_modules_swapped_in_after_the_first_call(dropout):
    """A dropout swapped in after a first reversible step gets its masks replayed."""
    torch.manual_seed(0)
    rev = container().double().train()
    weighted_loss(rev(xs())).backward()  # first call: whatever is cached, is cached now
    for blk in (rev.ops()[0].block(0), rev.ops()[1].block(1)):
        blk.f.transform(0, 1)[-1] = dropout(0.5)  # replaces the Identity
    rev.zero_grad()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    grads = []
    for m in (rev, plain):
        x = xs()
        torch.manual_seed(7)
        weighted_loss(m(x)).backward()
        grads.append([t.grad for t in x] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    with torch.no_grad():  # the dropout really draws masks (else nothing was tested)
        torch.manual_seed(1)
        o1 = plain(xs(grad=False))
        torch.manual_seed(2)
        o2 = plain(xs(grad=False))
    assert not torch.equal(o1[0], o2[0])


# ------------------------------------------------------- normalisation layers
@pytest.mark.parametrize("norm,expected", [
    (lambda c: nn.BatchNorm2d(c), torch.float64),
    (lambda c: nn.GroupNorm(1, c), torch.float64),
    (lambda c: nn.InstanceNorm2d(c, affine=True), torch.float64),
    (lambda c: nn.Sequential(), None),
    (None, None),
])
def test_auto_streams_see_every_norm_that_uses_input_statistics(norm, expected):
    seq = container(norm=norm).train()
    assert seq.resolved_stream_dtype() == expected


def test_auto_streams_ignore_frozen_batchnorm():
    seq = container(norm=lambda c: nn.BatchNorm2d(c)).train()
    for m in seq.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    assert seq.resolved_stream_dtype() is None


def _gn(c):
    return nn.GroupNorm(math.gcd(c, 4), c, eps=1e-3)


def _rev_vs_plain_error(model, stream_dtype, x):
    """max |reversible - plain| / max |grad| over the input and parameter gradients (fp32 model).

    The plain reference carries float64 streams (the most accurate one)."""
    gs = []
    for mode, sd in (("reversible", stream_dtype), ("plain", torch.float64)):
        m = copy.deepcopy(model)
        m.set_policy(memory_mode=mode, stream_dtype=sd)
        xi = x.clone().requires_grad_()
        g = torch.Generator().manual_seed(2)
        sum((f * torch.randn(f.shape, generator=g)).sum() for f in m(xi)).backward()
        gs.append([xi.grad] + [p.grad for p in m.parameters()])
    gmax = max(g.abs().max().item() for g in gs[1][1:])
    return max((a - b).abs().max().item() for a, b in zip(*gs)) / gmax


def test_group_norm_amplifies_float32_reconstruction_error_and_auto_streams_counter_it():
    """GroupNorm normalises with statistics of the current input, like a training BN: with
    float32 streams the reconstruction error grows in the gradients; 'auto' must see it."""
    torch.manual_seed(0)
    model = RevBiFPN("s0", num_classes=0, norm_layer=_gn).train()
    assert model.rev_stack.resolved_stream_dtype() == torch.float64
    x = torch.randn(2, 3, 64, 64)
    auto = _rev_vs_plain_error(model, "auto", x)
    fp32 = _rev_vs_plain_error(model, torch.float32, x)
    assert auto * 3 < fp32, f"auto {auto:.2e} vs float32 streams {fp32:.2e}"


def test_running_statistics_that_cannot_be_frozen_are_refused():
    seq = container(norm=lambda c: nn.InstanceNorm2d(c, track_running_stats=True)).double().train()
    with pytest.raises(ValueError, match=r"InstanceNorm2d.*updates running statistics.*memory_mode='plain'"):
        seq(xs())
    seq.set_memory_mode("plain")
    weighted_loss(seq(xs())).backward()  # plain autograd updates them once: fine
    ok = container(norm=lambda c: nn.InstanceNorm2d(c, affine=True)).double().train()  # no running stats
    weighted_loss(ok(xs())).backward()
