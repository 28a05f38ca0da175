"""The last drop-in edges against mmdet's ``HRFPN`` / ``HRNet`` and mmseg's ``FCNHead`` / ``HRNet``.

* ``conv_cfg`` / ``norm_cfg`` / ``act_cfg`` types the split-weight (lean) computation does not
  cover are computed as the replaced module computes them (elementwise against HRFPN / FCNHead);
* ``pooling_type`` in any case, and errors where HRFPN asserts caught as ``AssertionError`` too;
* ``norm_eval`` follows the default of the building scope's HRNet (mmdet: True, mmseg: False);
* any input size >= 32 (inside padding, outputs cropped to HRNet's ``ceil(H / s)``), with the
  multiples of 32 on today's exact path.
"""
import math
import warnings

import pytest

pytest.importorskip("mmdet")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

import revbifpn_mm.mm  # noqa: E402,F401

pytestmark = [pytest.mark.mm]
S0 = [48, 64, 128, 320]  # RevBiFPN-S0 out_channels


def _randomize(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.1, 0.05)  # a non-zero mean, so that weight standardisation changes the result


def _levels(n=2, size=16, channels=S0, seed=1):
    torch.manual_seed(seed)
    return [torch.randn(n, c, size >> i, size >> i, requires_grad=True) for i, c in enumerate(channels)]


# ------------------------------------------------------------------ 1. conv_cfg / norm_cfg types
@pytest.mark.parametrize("lean,training", [(True, True), (False, True), (True, False)],
                         ids=["lean_train", "plain_train", "eval"])
def test_neck_conv_ws_equals_hrfpn_elementwise(lean, training, mm_build):
    cfg = dict(in_channels=S0, out_channels=32, num_outs=5, conv_cfg=dict(type="ConvWS"))
    hr = mm_build(dict(type="HRFPN", **cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = mm_build(dict(type="RevBiFPNNeck", recompute_sum=lean, **cfg))
    _randomize(hr)
    ours.load_state_dict(hr.state_dict())
    hr.train(training)
    ours.train(training)
    xs = _levels()
    out_h, out_o = hr(xs), ours(xs)
    for a, b in zip(out_o, out_h):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g_h = torch.autograd.grad(sum((o * o).sum() for o in out_h), xs + list(hr.parameters()))
    g_o = torch.autograd.grad(sum((o * o).sum() for o in out_o), xs + list(ours.parameters()))
    for a, b in zip(g_o, g_h):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    assert any("ConvWS2d" in str(w.message) and "without the memory saving" in str(w.message) for w in caught)


def test_neck_plain_conv_keeps_the_split_path(mm_build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neck = mm_build(dict(type="RevBiFPNNeck", in_channels=S0, out_channels=32))
    assert neck.split_weight


def _fcn_pair(**kw):
    pytest.importorskip("mmseg")
    from mmseg.models.decode_heads import FCNHead

    from revbifpn_mm.mm.decode_head import LeanFCNHead
    cfg = dict(in_channels=S0, in_index=(0, 1, 2, 3), channels=sum(S0), input_transform="resize_concat",
               kernel_size=1, num_convs=1, concat_input=False, dropout_ratio=-1, num_classes=5,
               norm_cfg=dict(type="BN", requires_grad=True), align_corners=False)
    cfg.update(kw)
    ref = FCNHead(**cfg)
    _randomize(ref)
    with pytest.warns(UserWarning, match="running FCNHead's own forward"):
        lean = LeanFCNHead(**cfg)
    lean.load_state_dict(ref.state_dict())
    return ref, lean


@pytest.mark.parametrize("kw", [dict(conv_cfg=dict(type="ConvWS")),
                                dict(norm_cfg=dict(type="GN", num_groups=8)),
                                dict(act_cfg=dict(type="GELU"))], ids=["conv_ws", "gn", "gelu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_lean_fcn_head_other_module_types_equal_fcnhead(kw, training):
    ref, lean = _fcn_pair(**kw)
    ref.train(training)
    lean.train(training)
    xs = _levels()
    out_r, out_l = ref(xs), lean(xs)
    torch.testing.assert_close(out_l, out_r, rtol=1e-5, atol=1e-5)
    g_r = torch.autograd.grad(out_r.square().sum(), xs)
    g_l = torch.autograd.grad(out_l.square().sum(), xs)
    for a, b in zip(g_l, g_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ 2. HRFPN's arguments and errors
@pytest.mark.parametrize("name,pool", [("avg", F.avg_pool2d), ("Avg", F.avg_pool2d), ("AVG", F.avg_pool2d),
                                       ("max", F.max_pool2d), ("MAX", F.max_pool2d)])
def test_neck_pooling_type_any_case(name, pool, mm_build):
    neck = mm_build(dict(type="RevBiFPNNeck", in_channels=S0, out_channels=32, pooling_type=name))
    assert neck.pooling is pool


@pytest.mark.parametrize("exc", [AssertionError, ValueError])
def test_neck_errors_where_hrfpn_asserts_are_assertion_and_value_errors(exc, mm_build):
    with pytest.raises(exc, match="in_channels must be a list"):
        mm_build(dict(type="RevBiFPNNeck", in_channels=48, out_channels=32))
    neck = mm_build(dict(type="RevBiFPNNeck", in_channels=S0, out_channels=32))
    with pytest.raises(exc, match="got 3 inputs.*set neck.in_channels"):
        neck(_levels()[:3])
    with pytest.raises(exc, match="pooling_type must be 'AVG' or 'MAX'"):
        mm_build(dict(type="RevBiFPNNeck", in_channels=S0, out_channels=32, pooling_type="sum"))


# ------------------------------------------------------------------ 3. norm_eval per scope
@pytest.mark.parametrize("scope,expected", [("mmdet", True), ("mmseg", False)])
def test_norm_eval_follows_the_scope_hrnet_default(scope, expected, mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s0"), scope=scope)
    assert b.norm_eval is expected
    b.train()
    assert all(m.training is not expected for m in b.modules() if isinstance(m, _BatchNorm))


@pytest.mark.parametrize("scope", ["mmdet", "mmseg"])
@pytest.mark.parametrize("value", [True, False])
def test_explicit_norm_eval_wins_over_the_scope(scope, value, mm_build):
    assert mm_build(dict(type="RevBiFPN", arch="s0", norm_eval=value), scope=scope).norm_eval is value


# ------------------------------------------------------------------ 4. any input size >= 32
def _backbone(mm_build):
    torch.manual_seed(0)
    return mm_build(dict(type="RevBiFPN", arch="s0", drop_path_rate=0.0)).eval()


@pytest.mark.parametrize("h,w", [(512, 683), (70, 33), (32, 100)])
def test_any_size_gives_hrnet_shapes_and_equals_the_zero_padded_input(h, w, mm_build):
    b = _backbone(mm_build)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        outs = b(x)
        padded = b(F.pad(x, (0, -w % 32, 0, -h % 32)))
    for s, o, p in zip((4, 8, 16, 32), outs, padded):
        assert o.shape[-2:] == (math.ceil(h / s), math.ceil(w / s))
        assert torch.equal(o, p[..., :o.shape[-2], :o.shape[-1]])


def test_any_size_trains(mm_build):
    b = _backbone(mm_build).train()
    x = torch.randn(2, 3, 70, 45, requires_grad=True)
    loss = sum(o.square().mean() for o in b(x))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[..., 64:, 32:].abs().sum() > 0  # the border reaches the loss
    assert all(p.grad is not None for p in b.parameters() if p.requires_grad)


def test_multiples_of_32_keep_the_exact_path(mm_build, monkeypatch):
    from revbifpn_mm.models import RevBiFPN
    b = _backbone(mm_build)
    plain = RevBiFPN("s0", num_classes=0, drop_path_rate=0.0).eval()
    plain.load_state_dict(b.state_dict())
    x = torch.randn(1, 3, 64, 96)
    seen = []
    stem = b.forward_features

    def spy(inp):
        seen.append(inp)
        return stem(inp)

    monkeypatch.setattr(b, "forward_features", spy)
    with torch.no_grad():
        outs = b(x)
        ref = plain(x)
    assert seen[0] is x  # no padded copy
    for o, r in zip(outs, ref):
        assert torch.equal(o, r)


def test_sizes_below_32_keep_a_clear_error(mm_build):
    b = _backbone(mm_build)
    with pytest.raises(ValueError, match="at least 32x32.*got 20x64"):
        b(torch.randn(1, 3, 20, 64))


def test_lean_fcn_head_keeps_the_lean_path_for_mmengine_batch_norms():
    """mmcv's 'SyncBN' (mmengine's SyncBatchNorm subclass) and what the Runner reverts it to on one
    process (mmengine's ``_BatchNormXd``) keep torch's BatchNorm forward: still lean."""
    pytest.importorskip("mmseg")
    from mmengine.model import revert_sync_batchnorm

    from revbifpn_mm.mm.decode_head import LeanFCNHead, _why_not_lean
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head = LeanFCNHead(in_channels=S0, in_index=(0, 1, 2, 3), channels=sum(S0), num_classes=5,
                           input_transform="resize_concat", norm_cfg=dict(type="SyncBN"))
    assert not [w for w in caught if "LeanFCNHead" in str(w.message)]
    assert _why_not_lean(head.convs[0]) is None
    head = revert_sync_batchnorm(head)
    assert type(head.convs[0].bn).__name__ == "_BatchNormXd" and _why_not_lean(head.convs[0]) is None
