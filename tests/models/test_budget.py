"""The memory budget between reversible and plain: ``plain_segments`` segments keep their activations
(ordinary autograd), counted from ``plain_from``; the rest run reversibly.

At every setting, from either end, gradients equal plain autograd's (the tolerance of
``test_reversible_gradients_match_plain_fp32``, stochastic depth active with matched RNG), BN
statistics move once, and the bytes kept for backward rise strictly with each segment kept, from
the reversible figure to the plain one.
"""
import copy

import pytest
import torch

from revbifpn_mm.core import saved_bytes
from revbifpn_mm.models import RevBiFPN


def _grads(m, x, seed=1):
    torch.manual_seed(seed)
    xi = x.clone().requires_grad_()
    feats = m(xi)
    g = torch.Generator().manual_seed(2)
    sum((f * torch.randn(f.shape, generator=g)).sum() for f in feats).backward()
    out = [xi.grad] + [p.grad for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    return out


@pytest.fixture(scope="module")
def s0():
    torch.manual_seed(0)
    return RevBiFPN("s0", num_classes=0, drop_path_rate=0.2).train()


def _freeze_bn(m):
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()
    return m


@pytest.mark.parametrize("arch,bn,end", [("s0", "train", "output"), ("s0", "train", "input"),
                                         ("s0", "frozen", "output"), ("s2", "train", "output"),
                                         ("s2", "frozen", "input")])
def test_every_setting_gives_plain_gradients_and_statistics(arch, bn, end):
    """Training BN (float64 streams, statistics of the batch) and frozen BN (float32 streams); every
    setting for S0, the first, a middle and the last for S2."""
    torch.manual_seed(0)
    base = RevBiFPN(arch, num_classes=0, drop_path_rate=0.2).train()
    if bn == "frozen":
        _freeze_bn(base)
    x = torch.randn(2, 3, 64, 64)
    plain = copy.deepcopy(base)
    plain.set_memory_mode("plain")
    ref = _grads(plain, x)
    gmax = max(g.abs().max().item() for g in ref[1:])
    n = base.rev_stack.max_plain_segments
    assert n >= 4
    for k in (range(1, n + 1) if arch == "s0" else (1, n // 2, n)):
        m = copy.deepcopy(base)
        m.set_policy(plain_segments=k, plain_from=end)
        got = _grads(m, x)
        worst = max((a - b).abs().max().item() for a, b in zip(got, ref)) / gmax
        assert worst < 1e-5, f"plain_segments={k} from the {end}: max |diff| / max|grad| = {worst:.2e}"
        for (name, a), (_, b) in zip(m.named_buffers(), plain.named_buffers()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"{name} at plain_segments={k}")


@pytest.mark.parametrize("end", ["output", "input"])
def test_kept_bytes_rise_with_every_segment_from_reversible_to_plain(s0, end):
    """Fails if the setting is ignored (every k the reversible figure) or reversibility is off."""
    x = torch.randn(1, 3, 128, 128)
    m = copy.deepcopy(s0)
    n = m.rev_stack.max_plain_segments
    kept = []
    for k in range(n + 1):
        m.set_policy(plain_segments=k, plain_from=end)
        kept.append(saved_bytes(lambda: m(x), exclude=m.parameters()))
    m.set_policy(plain_segments=0, memory_mode="plain")
    plain = saved_bytes(lambda: m(x), exclude=m.parameters())
    assert all(b > a for a, b in zip(kept, kept[1:])), kept
    assert plain > 20 * kept[0]
    assert kept[-1] == pytest.approx(plain, rel=0.02), (kept[-1], plain)


def test_bad_settings_are_refused_and_more_than_all_is_all(s0):
    with pytest.raises(ValueError, match="plain_from must be one of"):
        s0.set_policy(plain_from="middle")
    with pytest.raises(ValueError, match="plain_segments must be an int >= 0"):
        s0.set_policy(plain_segments=-1)
    x = torch.randn(1, 3, 64, 64)
    m = copy.deepcopy(s0)
    n = m.rev_stack.max_plain_segments
    m.set_policy(plain_segments=n)
    everything = saved_bytes(lambda: m(x), exclude=m.parameters())
    m.set_policy(plain_segments=n + 5)
    assert saved_bytes(lambda: m(x), exclude=m.parameters()) == everything
