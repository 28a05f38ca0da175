"""Invertibility, fused backward vs autograd, gradcheck and RNG/BN/autocast replay of the core ops."""
import copy
import weakref

import pytest
import torch
from torch import nn

from revbifpn_mm.core import (CallState, RecomputedPerScale, RevBlockGroup, RevResidualBlock, RevSequential,
                              RevSilo, SpaceToDepth, TriangularCoupling, depth_to_space, space_to_depth)
from meters import KernelCounter
from revbifpn_mm.core.sequential import random_couplings
from revbifpn_mm.models import MBConv
from fidelity import randomize_affine_

torch.set_default_dtype(torch.float32)


def mb(cin, cout, k=3, s=1, p=0.0):
    return MBConv(cin, cout, k, s, expand_ratio=2, se_ratio=0.25, drop_prob=p)


def up(cin, cout, f, p=0.0):
    return nn.Sequential(mb(cin, cout, p=p), nn.Upsample(scale_factor=f, mode="bilinear", align_corners=False))


def make_silo(chs=(4, 6, 8), n_in=2, p=0.0):
    n_out = len(chs)
    down = {(i, j): mb(chs[i], chs[j], 2 * 2 ** (j - i) - 1, 2 ** (j - i), p) for j in range(1, n_out)
            for i in range(min(j, n_in))}
    ups = {(k, h): up(chs[k], chs[h], 2 ** (k - h), p) for k in range(1, n_out) for h in range(k)}
    return RevSilo(down, ups, n_in, n_out)


def randomize(module, seed=0):
    return randomize_affine_(module, torch.Generator().manual_seed(seed))


def inputs(chs, size=16, batch=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size >> h, size >> h, generator=g, dtype=dtype) for h, c in enumerate(chs)]


def test_space_to_depth_channel_order_matches_spec():
    x = torch.randn(2, 3, 8, 12)
    y = space_to_depth(x, 4)
    for i in range(4):
        for j in range(4):
            for c in range(3):
                assert torch.equal(y[:, (i * 4 + j) * 3 + c], x[:, c, i::4, j::4])
    assert torch.equal(depth_to_space(y, 4), x)
    assert not torch.equal(y, nn.functional.pixel_unshuffle(x, 4))


@pytest.mark.parametrize("name", ["stem", "block", "silo_expand", "silo_fuse", "coupling"])
def test_inverse_recovers_input(name):
    torch.manual_seed(0)
    if name == "stem":
        op, xs = SpaceToDepth(4), [torch.randn(2, 3, 16, 16, dtype=torch.float64)]
    elif name == "block":
        op, xs = RevBlockGroup([RevResidualBlock(mb(3, 3), mb(3, 3), 6)]), inputs([6])
    elif name == "silo_expand":
        op, xs = make_silo((4, 6, 8), 2), inputs((4, 6))
    elif name == "silo_fuse":
        op, xs = make_silo((4, 6, 8), 3), inputs((4, 6, 8))
    else:
        op, xs = TriangularCoupling(3, 3, {(0, 1): mb(4, 4), (0, 2): mb(4, 4), (1, 2): mb(4, 4)}), \
            [torch.randn(2, 4, 8, 8, dtype=torch.float64) for _ in range(3)]
    op = randomize(op).double().eval()
    with torch.no_grad():
        ys = op(xs)
        rec = op.inverse(ys)
    assert len(rec) == len(xs)
    for a, b in zip(rec, xs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["block", "silo_expand", "silo_fuse"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("reuse", [False, True])
def test_backward_pass_equals_autograd(name, train, reuse):
    """The fused reconstruct-and-backprop pass gives autograd's gradients (float64), as written
    (out of place) and with the in-place stream buffers."""
    torch.manual_seed(0)
    if name == "block":
        op, xs = RevBlockGroup([RevResidualBlock(mb(3, 3, p=0.3), mb(3, 3, p=0.3), 6)]), inputs([6])
    elif name == "silo_expand":
        op, xs = make_silo((4, 6, 8), 2, p=0.3), inputs((4, 6))
    else:
        op, xs = make_silo((4, 6, 8), 3, p=0.3), inputs((4, 6, 8))
    op = randomize(op).double().train(train)
    ref = copy.deepcopy(op)
    xs_ref = [x.clone().requires_grad_() for x in xs]
    torch.manual_seed(7)
    ys_ref = ref(xs_ref)
    dys = [torch.randn_like(y) for y in ys_ref]
    torch.autograd.backward(ys_ref, dys)

    state = CallState(xs, list(op.parameters()), reuse_buffers=reuse, stochastic=random_couplings(op))
    torch.manual_seed(7)
    with torch.no_grad():
        ys = op(xs, state)
    for a, b in zip(ys, ys_ref):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
    torch.manual_seed(123)  # the replay must not depend on the global RNG at backward time
    state.begin_backward()
    with torch.no_grad():
        rec, dxs = op.backward_pass(ys, dys, state)
    for a, b in zip(rec, xs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(dxs, xs_ref):
        torch.testing.assert_close(a, b.grad, rtol=1e-9, atol=1e-10)
    for (n, p), (_, q) in zip(op.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(state.grads.by_id[id(p)], q.grad, rtol=1e-9, atol=1e-10, msg=lambda m: f"{n}: {m}")


def tiny_container(p=0.0, tail=True):
    blocks = RevBlockGroup([RevResidualBlock(mb(2, 2, p=p), mb(2, 2, p=p), 4)])
    silo = make_silo((4, 6), 1, p=p)
    group = RevBlockGroup([RevResidualBlock(mb(2, 2, p=p), mb(2, 2, p=p), 4),
                           RevResidualBlock(mb(3, 3, p=p), mb(3, 3, p=p), 6)])
    neck = RecomputedPerScale([mb(4, 5), mb(6, 3)]) if tail else None
    return randomize(RevSequential([SpaceToDepth(2), blocks, silo, group], neck))


def test_gradcheck_reversible_function():
    """Numerical vs analytical Jacobian of the whole reversible Function, inputs *and* parameters."""
    torch.manual_seed(0)
    seq = tiny_container().double().train()
    for m in seq.modules():  # batch statistics make the Jacobian dense; eval BN keeps gradcheck sharp
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    params = [p for p in seq.parameters()][:12]  # a subset keeps gradcheck fast
    for p in seq.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    assert seq.num_segments == 2  # the gradient crosses a segment boundary (the segment below receives its rebuilt outputs)
    assert torch.autograd.gradcheck(lambda x, *ps: seq([x]), (x, *params),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("tail", [True, False])
def test_container_reversible_matches_plain_with_drop_path(tail):
    torch.manual_seed(0)
    rev = tiny_container(p=0.4, tail=tail).double().train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    grads = []
    for model in (rev, plain):
        xi = x.clone().requires_grad_()
        torch.manual_seed(3)
        outs = model([xi])
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
        loss.backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    assert all(g is not None for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # the drop-path masks really were active (otherwise this test would not test RNG replay)
    torch.manual_seed(4)
    with torch.no_grad():
        o1 = plain([x])
    torch.manual_seed(5)
    with torch.no_grad():
        o2 = plain([x])
    assert not torch.allclose(o1[0], o2[0])


def test_two_forwards_before_one_backward():
    torch.manual_seed(0)
    rev = tiny_container(p=0.5).double().train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    res = []
    for model in (rev, plain):
        torch.manual_seed(1)
        a = model([x])
        torch.manual_seed(2)
        b = model([x])
        (sum(o.sum() for o in b) + 2 * sum(o.sum() for o in a)).backward()
        res.append([p.grad for p in model.parameters()])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_bn_running_stats_updated_once():
    torch.manual_seed(0)
    rev = tiny_container().train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(4, 1, 16, 16)
    for model in (rev, plain):
        sum(o.sum() for o in model([x])).backward()
    for (n, a), (_, b) in zip(rev.named_buffers(), plain.named_buffers()):
        if n.endswith("num_batches_tracked"):
            assert a.item() == b.item() == 1, n
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_params_get_grads_without_input_grad_and_frozen_params_work():
    torch.manual_seed(0)
    seq = tiny_container().train()
    frozen = list(seq.parameters())[:5]
    for p in frozen:
        p.requires_grad_(False)
    outs = seq([torch.randn(2, 1, 16, 16)])  # input does not require grad
    assert outs[0].grad_fn is not None
    sum(o.sum() for o in outs).backward()
    for p in seq.parameters():
        assert (p.grad is None) == (not p.requires_grad)
    # torch.autograd.grad sees the parameters too
    outs = seq([torch.randn(2, 1, 16, 16)])
    gs = torch.autograd.grad(sum(o.sum() for o in outs), [p for p in seq.parameters() if p.requires_grad])
    assert all(g is not None for g in gs)


def test_eval_and_no_grad_take_plain_path():
    seq = tiny_container()
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    seq.eval()
    out = seq([x])
    assert "RevSegment" not in type(out[0].grad_fn).__name__
    seq.train()
    with torch.no_grad():
        out = seq([x])
    assert out[0].grad_fn is None
    out = seq([x])
    assert "RevSegment" in type(out[0].grad_fn).__name__


def test_autocast_replay_bf16_cpu():
    torch.manual_seed(0)
    rev = tiny_container(p=0.3, tail=False).train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(4, 1, 16, 16)
    grads = []
    for model in (rev, plain):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = model([x])
        assert all(o.dtype == torch.float32 for o in outs), "residual streams must stay float32"
        sum((o.float() ** 2).sum() for o in outs).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0).item()
    assert cos >= 0.999, cos


def test_memory_mode_validation():
    seq = tiny_container()
    with pytest.raises(ValueError, match=r"unknown memory_mode 'checkpoint'; expected one of \['reversible', 'plain'\]"):
        seq.set_memory_mode("checkpoint")


@pytest.mark.parametrize("tail", [True, False])
def test_retained_graph_runs_backward_again(tail):
    """The backward reuses the stored outputs as working buffers only when no graph is kept:
    with ``retain_graph=True`` a second backward must give the same gradients."""
    torch.manual_seed(0)
    seq = tiny_container(p=0.3, tail=tail).double().train()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    torch.manual_seed(1)
    outs = seq([x])
    loss = sum((o * o.roll(1, 1)).sum() for o in outs)
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in seq.parameters()]
    seq.zero_grad()
    loss.backward()
    for a, b in zip(first, (p.grad for p in seq.parameters())):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


class _Probe(torch.autograd.Function):
    """Identity whose backward records whether the tensor ``ref`` points to is still alive."""

    @staticmethod
    def forward(ctx, x, log):  # type: ignore[override]
        ctx.log = log
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        ctx.log.append(ctx.log[0]() is not None)
        return g, None


class _ReleaseCheck(nn.Module):
    """``mb`` followed by a BN-like last op whose output nothing in the graph saves."""

    def __init__(self, log):
        super().__init__()
        self.body, self.log = mb(2, 2), log

    def forward(self, x):
        h = _Probe.apply(self.body(x), self.log)
        y = h * 2.0  # MulBackward0 with a constant saves nothing
        self.log[:] = [weakref.ref(y)]
        return y


def test_recomputed_output_is_released_before_its_backward():
    """The recomputed output of a transform is not part of its backward's working set."""
    log = []
    block = RevResidualBlock(_ReleaseCheck(log), mb(2, 2), 4).double().train()
    seq = RevSequential([RevBlockGroup([block])], None, stream_dtype=None)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    seq([x])[0].sum().backward()
    assert log[1:] == [False], "the recomputed output was still referenced during its backward"


def test_in_place_stream_buffers_change_nothing_but_where_results_go():
    """``reuse_buffers`` (the default) updates the backward's own stream buffers in place: the
    gradients are bitwise those of the out-of-place algorithm, and the stream updates dispatch
    in-place kernels instead of allocating a new tensor each."""
    torch.manual_seed(0)
    base = tiny_container(p=0.3).double().train()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    grads, counts = [], []
    for reuse in (True, False):
        m = copy.deepcopy(base)
        m.policy = m.policy.replace(reuse_buffers=reuse)
        xi = x.clone().requires_grad_()
        torch.manual_seed(3)
        loss = sum((o * o.roll(1, 1)).sum() for o in m([xi]))
        with KernelCounter() as c:
            loss.backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
        counts.append(c.by_op)
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    assert counts[0]["add_"] > counts[1]["add_"] and counts[1]["sub"] > 0 == counts[0]["sub"], counts
