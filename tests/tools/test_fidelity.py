"""Numerical fidelity of the reversible backward at depth and under bf16 autocast (CPU)."""
import pytest
import torch

import fidelity


@pytest.mark.parametrize("arch", ["s0", "s3"])
def test_fidelity_frozen_and_train_bn(arch):
    rows = fidelity.run_arch(arch, size=128, batch=2, device=torch.device("cpu"))
    for r in rows:
        # the reversible error stays within a small factor of an ordinary network's own fp32 spread
        assert r["rev_vs_fp64"] <= 2 * r["plain_vs_fp64"] + 1e-7, r
        if r["bn"] == "frozen":
            assert r["rev_vs_plain"] <= 1e-3, r
        # bf16 autocast: residual streams stay fp32, recomputation replays autocast
        assert r["bf16_cos_rev_plain"] >= 0.999, r


def test_error_does_not_grow_faster_than_depth():
    """Deeper networks (more extension layers) do not amplify the reconstruction error super-linearly."""
    from revbifpn_mm.models import RevBiFPN
    errs = {}
    for ext in (2, 8):
        torch.manual_seed(0)
        m = RevBiFPN("s0", num_classes=0, num_ext_layers=ext).train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
        x = torch.randn(2, 3, 64, 64)
        w = [torch.randn(f.shape) for f in m.eval()(x)]
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
        g_rev = fidelity.grads(m, x, w)
        m.set_memory_mode("plain")
        g_plain = fidelity.grads(m, x, w)
        errs[ext] = fidelity.max_rel(g_rev, g_plain)
    # L = 5 -> 11 layers: linear growth would be 2.2x; allow that with a margin of 2
    assert errs[8] <= 2 * 11 / 5 * max(errs[2], 1e-8), errs
