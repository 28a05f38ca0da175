"""norm_cfg of the RevBiFPN backbone: which normalisation types are accepted, handled or refused."""
import copy

import pytest

pytest.importorskip("mmcv.cnn")
import torch  # noqa: E402
from torch import nn  # noqa: E402

import revbifpn_mm  # noqa: E402,F401
from revbifpn_mm.mm import RevBiFPNBackbone  # noqa: E402

pytestmark = pytest.mark.mm


def build(**norm_cfg):
    # norm_eval explicit: its default follows the current mmengine scope, which earlier tests may set
    return RevBiFPNBackbone(arch="s0", norm_cfg=norm_cfg, norm_eval=False)


def test_mmcv_sync_bn_is_refused_with_torch_sync_bn_as_the_fix():
    with pytest.raises(ValueError, match=r"MMSyncBN.*twice per step.*Fix: use norm_cfg=dict\(type='SyncBN'"):
        build(type="MMSyncBN")


def test_mmcv_sync_bn_class_is_refused_too():
    ops = pytest.importorskip("mmcv.ops")
    with pytest.raises(ValueError, match=r"MMSyncBN.*type='SyncBN'"):
        build(type=ops.SyncBatchNorm)


def test_layer_norm_is_refused():
    with pytest.raises(ValueError, match=r"nn\.LayerNorm\(\d+\).*width.*dict\(type='GN', num_groups=1\)"):
        build(type="LN")


@pytest.mark.parametrize("kind", ["IN", "IN2d"])
def test_other_norms_are_refused(kind):
    with pytest.raises(ValueError, match=rf"{kind!r} builds InstanceNorm2d, which RevBiFPN does not support"):
        build(type=kind)


@pytest.mark.parametrize("kind", ["BN", "SyncBN"])
def test_torch_batch_norms_are_accepted(kind):
    b = build(type=kind)
    norms = [m for m in b.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.eps == 1e-3 for m in norms)
    assert b.train().rev_stack.resolved_stream_dtype() == torch.float64
    assert RevBiFPNBackbone(arch="s0", norm_cfg=dict(type=kind), norm_eval=True).train() \
        .rev_stack.resolved_stream_dtype() is None


def test_group_norm_needs_num_groups():
    with pytest.raises(ValueError, match=r"'GN' needs num_groups, e\.g\. dict\(type='GN', num_groups=8\)"):
        build(type="GN")


def test_group_norm_num_groups_must_divide_the_channels():
    with pytest.raises(ValueError, match=r"num_groups=32: a RevBiFPN layer has \d+ channels.*num_groups=8"):
        build(type="GN", num_groups=32)


@pytest.mark.parametrize("norm_eval", [False, True])
def test_group_norm_is_handled(norm_eval):
    """GN: accepted; 'auto' carries float64 streams (per-sample statistics, with or without
    norm_eval, which cannot freeze statistics GN does not keep); a reversible step equals plain."""
    torch.manual_seed(0)
    rev = RevBiFPNBackbone(arch="s0", norm_cfg=dict(type="GN", num_groups=8), norm_eval=norm_eval).train()
    gns = [m for m in rev.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in rev.modules())
    assert rev.rev_stack.resolved_stream_dtype() == torch.float64
    plain = copy.deepcopy(rev)
    plain.rev_stack.set_memory_mode("plain")
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for m in (rev, plain):
        g = torch.Generator().manual_seed(1)
        sum((f * torch.randn(f.shape, generator=g)).sum() for f in m(x)).backward()
        grads.append([p.grad for p in m.parameters()])
    gmax = max(g.abs().max().item() for g in grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * gmax)
