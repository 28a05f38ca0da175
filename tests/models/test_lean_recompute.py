"""``lean_recompute``: checkpointing the middle of each MBConv inside the reversible backward.

It must change nothing but memory and time: the same gradients (bitwise) and the same BN
statistics (updated once per step) as the default recomputation, and no effect in
plain mode or outside a reversible backward.
"""
import copy

import pytest
import torch

from revbifpn_mm.core import SavedTensorCounter, is_recomputing
from revbifpn_mm.models import RevBiFPN
from revbifpn_mm.models.blocks import MBConv


def _step(model, x):
    model.zero_grad(set_to_none=True)
    sum((o * o.roll(1, 1)).mean() for o in model(x)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, copy.deepcopy(model.state_dict())


def test_lean_recompute_modes_select_the_mbconvs():
    model = RevBiFPN("s0", num_classes=0)
    neck = set(model.rev_stack.recomp_op.modules())
    blocks = [m for m in model.modules() if isinstance(m, MBConv)]
    assert model.lean_recompute == "neck"  # the default
    assert all(m.lean_recompute == (m in neck) for m in blocks)
    assert sum(m.lean_recompute for m in blocks) == 4
    for mode, expect in ((True, "all"), ("all", "all"), (False, "none"), ("none", "none")):
        model.set_lean_recompute(mode)
        assert model.lean_recompute == expect
        assert all(m.lean_recompute == (expect == "all") for m in blocks)
    with pytest.raises(ValueError, match="lean_recompute must be 'neck', 'all'"):
        RevBiFPN("s0", num_classes=0, lean_recompute="trunk")


@pytest.mark.parametrize("mode", ["neck", "all"])
@pytest.mark.parametrize("norm_eval", [False, True])
def test_lean_recompute_gives_the_same_step(norm_eval, mode):
    torch.manual_seed(0)
    ref = RevBiFPN("s0", num_classes=0, drop_path_rate=0.2, lean_recompute="none").train()
    lean = copy.deepcopy(ref)
    lean.set_lean_recompute(mode)
    assert any(m.lean_recompute for m in lean.modules() if isinstance(m, MBConv))
    for model in (ref, lean):
        if norm_eval:
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(1)
    g_ref, sd_ref = _step(ref, x)
    torch.manual_seed(1)
    g_lean, sd_lean = _step(lean, x)
    gmax = max(g.abs().max().item() for g in g_ref.values())
    worst = max((g_lean[n] - g).abs().max().item() for n, g in g_ref.items()) / gmax
    print(f"lean_recompute={mode!r} vs 'none' (norm_eval={norm_eval}): max rel gradient diff {worst:.2e}")
    assert worst == 0.0, f"lean vs default recompute: max rel gradient diff {worst:.2e}"
    for k, v in sd_ref.items():  # BN statistics: updated once, identically
        torch.testing.assert_close(sd_lean[k], v, rtol=0, atol=0 if k.endswith("num_batches_tracked") else 1e-6)


def test_lean_recompute_only_acts_inside_the_reversible_backward():
    torch.manual_seed(0)
    block = MBConv(8, 8, 3, expand_ratio=2, se_ratio=0.25).train()
    block.lean_recompute = True
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    assert not is_recomputing()
    with SavedTensorCounter() as plain_count:  # not recomputing: ordinary autograd
        block(x)
    block.lean_recompute = False
    with SavedTensorCounter() as ref_count:
        block(x)
    assert plain_count.nbytes == ref_count.nbytes
    track = [m.num_batches_tracked.item() for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert track == [2] * len(track)  # two plain forwards, no hidden recomputation


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_lean_channel_scale_gradients(layout):
    """The SE gate product of the lean path (no full-size temporary) against autograd's ``x * s``."""
    from revbifpn_mm.models.blocks import _ChannelScale
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    s = torch.rand(2, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ChannelScale.apply, (x, s))
    dy = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    ref = torch.autograd.grad(x * s, (x, s), dy)
    got = torch.autograd.grad(_ChannelScale.apply(x, s), (x, s), dy)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)  # chunked reduction, same per-channel order: bitwise autograd's


def test_lean_channel_scale_under_bf16_autocast():
    from revbifpn_mm.models.blocks import _ChannelScale
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    s = torch.rand(2, 4, 1, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.to(torch.bfloat16)
        y = _ChannelScale.apply(xb, s)
        y_ref = xb * s
    assert y.dtype == y_ref.dtype
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, s), dy)
    ref = torch.autograd.grad(y_ref, (x, s), dy)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
