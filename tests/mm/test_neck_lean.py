"""``RevBiFPNNeck(recompute_sum=True)``: the stride-4 reduction is recomputed, not kept, for backward.

In a RevBiFPN detector the peak of a training step sits in the neck and heads; the
neck's largest tensor is the stride-4 reduction (``out_channels`` wide). Recomputing it
must change nothing but memory: bitwise the same outputs and gradients.
"""
import gc
import weakref

import pytest
import torch

pytest.importorskip("mmcv.cnn")
from revbifpn_mm.core import saved_bytes  # noqa: E402
from revbifpn_mm.mm import RevBiFPNNeck  # noqa: E402

IN_CHANNELS = [48, 64, 128, 320]


def _inputs(h=64, w=96):
    torch.manual_seed(0)
    return [torch.randn(2, c, h >> i, w >> i, requires_grad=True) for i, c in enumerate(IN_CHANNELS)]


def _neck(recompute):
    torch.manual_seed(1)
    neck = RevBiFPNNeck(IN_CHANNELS, out_channels=32, num_outs=5, recompute_sum=recompute)
    with torch.no_grad():
        for p in neck.parameters():
            p.normal_(0, 0.05)
    return neck


def _step(neck, xs):
    outs = neck(xs)
    loss = sum((o * o.roll(1, 1)).sum() for o in outs)
    grads = torch.autograd.grad(loss, xs + list(neck.parameters()))
    return [o.detach() for o in outs], grads


def test_lean_neck_is_bitwise_the_plain_neck():
    xs = _inputs()
    outs_p, grads_p = _step(_neck(False), xs)
    outs_l, grads_l = _step(_neck(True), xs)
    for a, b in zip(outs_p + list(grads_p), outs_l + list(grads_l)):
        assert torch.equal(a, b)


def _reduction_survives_forward(recompute):
    """Whether the stride-4 reduction tensor is still alive after the forward returned."""
    neck = _neck(recompute)
    seen = []
    pool = neck.pooling

    def spy(x, *args, **kwargs):
        if not seen:
            seen.append(weakref.ref(x))
        return pool(x, *args, **kwargs)

    neck.pooling = spy
    xs = _inputs()
    outs = neck(xs)
    gc.collect()
    alive = seen[0]() is not None
    sum(o.sum() for o in outs).backward()  # the recomputation runs and the graph is consumed
    return alive


def test_lean_neck_does_not_keep_the_stride4_reduction():
    assert _reduction_survives_forward(recompute=False)  # the plain neck keeps it (the probe works)
    assert not _reduction_survives_forward(recompute=True)


def test_lean_neck_saves_less_for_backward():
    xs = _inputs()
    plain, lean = _neck(False), _neck(True)
    b_plain = saved_bytes(lambda: plain(xs), exclude=list(plain.parameters()) + xs)
    b_lean = saved_bytes(lambda: lean(xs), exclude=list(lean.parameters()) + xs)
    stride4 = 2 * 32 * 64 * 96 * 4  # one out_channels-wide stride-4 map, float32
    assert b_plain >= stride4
    assert b_lean <= b_plain - stride4, (b_lean, b_plain)


def test_lean_neck_falls_back_when_the_reduction_norm_trains():
    neck = RevBiFPNNeck(IN_CHANNELS, out_channels=32, num_outs=2, recompute_sum=True)
    neck.reduction_conv = type(neck.reduction_conv)(sum(IN_CHANNELS), 32, 1, norm_cfg=dict(type="BN"),
                                                     act_cfg=None)
    neck.train()
    xs = _inputs()
    before = neck.reduction_conv.norm.num_batches_tracked.item()
    sum(o.sum() for o in neck(xs)).backward()
    assert neck.reduction_conv.norm.num_batches_tracked.item() == before + 1  # one update per step


def test_the_earlier_name_lean_still_works_and_says_so():
    with pytest.warns(FutureWarning, match="lean= is now called recompute_sum="):
        neck = RevBiFPNNeck(IN_CHANNELS, out_channels=32, num_outs=2, lean=False)
    assert neck.recompute_sum is False
