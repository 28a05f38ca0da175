"""Folding frozen BatchNorm into the preceding convolution (``fold_frozen_bn``).

Folding rewrites ``norm(conv(x, W))`` as ``conv(x, W * s) + (beta - mean * s)`` with
``s = gamma / sqrt(var + eps)`` for BN in eval mode. It must change nothing but rounding:
outputs, every parameter's gradient (conv weights, BN gamma and beta) and the BN statistics,
in plain and reversible mode; and it must never touch a BN that is training.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from revbifpn_mm.models import RevBiFPN
from revbifpn_mm.models.blocks import ConvNormAct

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))


def _model(mode: str, fold, frozen: bool = True) -> RevBiFPN:
    torch.manual_seed(0)
    m = RevBiFPN("s0", num_classes=0, memory_mode=mode, fold_frozen_bn=fold, drop_path_rate=0.0).train()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            # statistics and affine parameters far from the initial 0/1, so folding matters
            c = mod.num_features
            mod.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
            if frozen:
                mod.eval()
    return m


def _step(m: RevBiFPN):
    m.zero_grad(set_to_none=True)
    outs = m(X)
    sum((o * o).mean() for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    stats = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
    return [o.detach() for o in outs], grads, stats


@pytest.mark.parametrize("mode", ["plain", "reversible"])
def test_folded_frozen_bn_matches_unfolded(mode):
    ref_out, ref_g, ref_s = _step(_model(mode, False))
    out, g, s = _step(_model(mode, True))
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())
    assert ref_g.keys() == g.keys()
    for n, r in ref_g.items():  # the equivalence tests' gradient tolerance
        torch.testing.assert_close(g[n], r, rtol=1e-2, atol=1e-4 * r.abs().max().item() + 1e-12,
                                   msg=lambda msg: f"{n}: {msg}")
    # the BN parameters do receive their gradients through the folding
    assert any(n.endswith("norm.weight") and g[n].abs().sum() > 0 for n in g)
    for n, r in ref_s.items():  # frozen statistics stay untouched
        assert torch.equal(s[n], r), n


def test_folding_really_skips_the_batch_norm():
    calls = []
    m = _model("reversible", True)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.register_forward_hook(lambda *a: calls.append(1))
    _step(m)
    assert not calls  # every BN of the backbone is folded: none runs
    m.set_fold_frozen_bn(False)
    _step(m)
    assert calls


def test_auto_folds_on_cpu_only():
    m = _model("plain", "auto")
    convs = [c for c in m.modules() if isinstance(c, ConvNormAct)]
    assert convs and all(c.fold_frozen_bn == "auto" for c in convs)
    x = torch.zeros(1, 8, 4, 4)
    assert convs[0]._folds(x)
    meta = torch.zeros(1, 8, 4, 4, device="meta")  # any non-CPU device
    assert not convs[0]._folds(meta)
    convs[0].fold_frozen_bn = True
    assert convs[0]._folds(meta)


def test_training_bn_is_never_folded():
    """With BN training, fold=True is bitwise the same as fold=False (batch statistics)."""
    a = _model("reversible", False, frozen=False)
    b = copy.deepcopy(a)
    b.set_fold_frozen_bn(True)
    out_a, g_a, s_a = _step(a)
    out_b, g_b, s_b = _step(b)
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))
    assert all(torch.equal(g_a[n], g_b[n]) for n in g_a)
    assert all(torch.equal(s_a[n], s_b[n]) for n in s_a)


def test_state_dict_is_unchanged_and_bad_values_refused():
    a, b = _model("plain", True), _model("plain", False)
    assert a.state_dict().keys() == b.state_dict().keys()
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="fold_frozen_bn"):
            RevBiFPN("s0", num_classes=0, fold_frozen_bn=bad)
