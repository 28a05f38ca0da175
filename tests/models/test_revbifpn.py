"""The RevBiFPN model contract: sizes, outputs, gradients, memory, checkpoints, bad input."""
import copy
import os

import pytest
import torch
from torch import nn

from revbifpn_mm.core import saved_bytes
from revbifpn_mm.models import (ARCH_SETTINGS, OFFICIAL_WEIGHTS, RevBiFPN, load_official_checkpoint, revbifpn_s0,
                                revbifpn_s1, revbifpn_s2, revbifpn_s3, revbifpn_s4, revbifpn_s5, revbifpn_s6)

# spec section 12.1 (measured on the official code): total, and trunk+neck without head
SPEC_PARAMS = {
    "s0": (3_419_196, 1_556_328), "s1": (5_112_300, 2_439_724), "s2": (10_576_528, 5_721_040),
    "s3": (19_574_184, 12_167_150), "s4": (48_687_336, 34_454_352), "s5": (81_998_976, 59_217_680),
    "s6": (142_307_972, 108_706_586),
}
SPEC_TRUNK = {"s0": 1_308_750, "s1": 2_040_258, "s2": 4_772_252, "s3": 10_574_744, "s4": 30_742_248,
              "s5": 52_779_582, "s6": 98_676_316}
ENTRY = dict(s0=revbifpn_s0, s1=revbifpn_s1, s2=revbifpn_s2, s3=revbifpn_s3, s4=revbifpn_s4,
             s5=revbifpn_s5, s6=revbifpn_s6)
SHARED_REF = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "reference")


def nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", sorted(ARCH_SETTINGS))
def test_parameter_counts_match_spec(arch):
    total, backbone = SPEC_PARAMS[arch]
    assert abs(total / 1e6 - OFFICIAL_WEIGHTS[arch].params_m) <= 0.05  # the zoo table, to its digits
    assert nparams(ENTRY[arch]()) == total
    assert nparams(ENTRY[arch](num_classes=0)) == backbone
    assert nparams(ENTRY[arch](num_classes=0, with_neck=False)) == SPEC_TRUNK[arch]


@pytest.mark.parametrize("arch", sorted(ARCH_SETTINGS))
def test_state_dict_layout_matches_official(arch):
    path = os.path.join(SHARED_REF, f"state_dict_{arch}.tsv")
    if not os.path.exists(path):
        pytest.skip("../shared/reference absent")
    rows = [line.rstrip("\n").split("\t") for line in open(path) if not line.startswith("#")]
    sd = ENTRY[arch]().state_dict()
    assert [r[0] for r in rows] == list(sd)
    for key, shape, _, _ in rows:
        assert tuple(int(s) for s in shape.split(",") if s) == tuple(sd[key].shape), key


def test_outputs_feature_info_and_shapes():
    m = RevBiFPN("s1", num_classes=0).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        feats = m(x)
    assert len(feats) == len(m.feature_info) == 4
    for f, info in zip(feats, m.feature_info):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[-2:] == (96 // info["reduction"], 64 // info["reduction"])
    assert tuple(m.out_channels) == ARCH_SETTINGS["s1"]["out_channels"]
    raw = RevBiFPN("s1", num_classes=0, with_neck=False).eval()
    with torch.no_grad():
        assert [f.shape[1] for f in raw(x)] == list(ARCH_SETTINGS["s1"]["channels"])
    with torch.no_grad():
        assert RevBiFPN("s0").eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    assert m.size_divisibility == 32


def test_num_ext_layers_override():
    m = RevBiFPN("s0", num_classes=0, num_ext_layers=4)
    assert m.num_layers == 7 and m.rev_stack.num_ops == 1 + 3 * 7


@pytest.mark.parametrize("mode", ["reversible", "plain"])
def test_every_parameter_gets_a_gradient(mode):
    m = RevBiFPN("s0", drop_path_rate=0.2, memory_mode=mode).train()
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    assert m.rev_stack.memory_mode.value == mode


@pytest.mark.parametrize("arch", ["s0", "s3"])
def test_reversible_gradients_match_plain_fp32(arch):
    """S0 and S3 at 256x256, fp32, stochastic depth active with matched RNG."""
    torch.manual_seed(0)
    rev = RevBiFPN(arch, num_classes=0, drop_path_rate=0.2).train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(2, 3, 256, 256)
    gs = []
    for m in (rev, plain):
        torch.manual_seed(1)
        xi = x.clone().requires_grad_()
        feats = m(xi)
        g = torch.Generator().manual_seed(2)
        sum((f * torch.randn(f.shape, generator=g)).sum() for f in feats).backward()
        gs.append([xi.grad] + [p.grad for p in m.parameters()])
    gmax = max(g.abs().max().item() for g in gs[1][1:])
    worst = 0.0
    for a, b in zip(*gs):
        worst = max(worst, (a - b).abs().max().item() / gmax)
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-4 * max(gmax, b.abs().max().item()))
    assert worst < 1e-5, f"max |rev - plain| / max|grad| = {worst:.2e}"  # official code: 8e-4 (S0, CPU)


def test_bn_statistics_after_step_equal_plain():
    torch.manual_seed(0)
    rev = RevBiFPN("s0", num_classes=0).train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(2, 3, 64, 64)
    for m in (rev, plain):
        sum(f.sum() for f in m(x)).backward()
    for (n, a), (_, b) in zip(rev.named_buffers(), plain.named_buffers()):
        if n.endswith("num_batches_tracked"):
            assert a.item() == b.item() == 1, n
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_saved_bytes_constant_in_depth_only_when_reversible():
    """Fails if reversibility is switched off: plain autograd grows with depth."""
    x = torch.randn(1, 3, 128, 128)
    res = {}
    for mode in ("reversible", "plain"):
        for ext in (2, 4, 8):
            m = RevBiFPN("s0", num_classes=0, num_ext_layers=ext, memory_mode=mode).train()
            res[mode, ext] = saved_bytes(lambda: m(x), exclude=m.parameters())
    assert res["reversible", 4] == res["reversible", 2] and res["reversible", 8] == res["reversible", 2]
    assert res["plain", 4] > 1.3 * res["plain", 2] and res["plain", 8] > 1.3 * res["plain", 4]
    assert res["plain", 2] > 20 * res["reversible", 2]
    trunk = sum(c * (32 >> h) ** 2 for h, c in enumerate(ARCH_SETTINGS["s0"]["channels"])) * 8
    assert res["reversible", 2] == trunk  # exactly the four trunk outputs (float64 streams), nothing else
    m = RevBiFPN("s0", num_classes=0, stream_dtype="float32").train()
    assert saved_bytes(lambda: m(x), exclude=m.parameters()) == trunk // 2
    # 'auto' (default): float64 streams only while BN trains; frozen BN (norm_eval) -> float32
    m = RevBiFPN("s0", num_classes=0).train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    assert saved_bytes(lambda: m(x), exclude=m.parameters()) == trunk // 2


def test_counted_forward_frees_what_it_saved():
    """A forward under SavedTensorCounter that is never backwarded (the planner counts every budget
    setting that way) must free everything once its outputs go: a counter that hands autograd the
    saved tensor itself ties a custom Function's saved outputs to their own node, and each counted
    forward of a reversible run followed by plain segments then kept its stream tensors alive."""
    import gc
    import weakref

    from revbifpn_mm.core import SavedTensorCounter

    class Recording(SavedTensorCounter):
        def _pack(self, t):
            if t.untyped_storage().data_ptr() not in self._excluded:
                refs.append(weakref.ref(t))
            return super()._pack(t)

    m = RevBiFPN("s0", num_classes=0, plain_segments=1).train()
    x = torch.randn(1, 3, 64, 64)
    refs = []
    with Recording(exclude=list(m.parameters()) + list(m.buffers())) as counter:
        out = m(x)
    assert counter.nbytes > 0 and refs
    del out
    gc.collect()
    alive = [tuple(r().shape) for r in refs if r() is not None]
    assert not alive, alive


@pytest.mark.parametrize("frozen_bn", [False, True])
def test_outputs_not_corrupted_by_backward_without_neck(frozen_bn):
    """Without the neck the outputs are the stored trunk outputs themselves (frozen BN:
    float32 streams, no cast copy); the backward must not reuse them as buffers."""
    m = RevBiFPN("s0", num_classes=0, with_neck=False).train()
    if frozen_bn:
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
    feats = m(torch.randn(2, 3, 64, 64))
    before = [f.detach().clone() for f in feats]
    sum(f.sum() for f in feats).backward()
    for a, b in zip(feats, before):
        assert torch.equal(a.detach(), b)


def test_image_requiring_grad_and_replicated_channels():
    m = RevBiFPN("s1", num_classes=0).train()  # 4 stem channels: R, G, B, R
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    sum(f.sum() for f in m(x)).backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("shape,match", [((1, 3, 100, 64), "multiples of 32"), ((1, 3, 64, 48), "multiples of 32"),
                                         ((1, 1, 64, 64), "3-channel"), ((1, 4, 64, 64), "3-channel"),
                                         ((3, 64, 64), "B, C, H, W")])
def test_bad_input_gives_clear_error(shape, match):
    m = RevBiFPN("s0", num_classes=0)
    with pytest.raises(ValueError, match=match):
        m(torch.randn(*shape))


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown RevBiFPN arch 's9'.*'s0'.*'s6'"):
        RevBiFPN("s9")
    with pytest.raises(ValueError, match="missing"):
        RevBiFPN(dict(channels=(16, 32, 48, 64)))
    m = RevBiFPN(dict(channels=(16, 16, 32, 32), out_channels=(16, 16, 32, 32), fc_features=64,
                      num_ext_layers=0), num_classes=0)
    assert m.num_layers == 3


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found") as err:
        RevBiFPN("s0", checkpoint=str(tmp_path / "nope.pth.tar"))
    # the torch-only layer gives no mmdet/mmseg advice: the mm layer adds its config keys
    assert "cfg-options" not in str(err.value) and "init_cfg" not in str(err.value), err.value
    good = tmp_path / "s0.pth"
    torch.save(RevBiFPN("s0").state_dict(), good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="truncated or not a PyTorch checkpoint"):
        RevBiFPN("s0", checkpoint=str(trunc))
    with pytest.raises(ValueError, match="another RevBiFPN size"):
        RevBiFPN("s1", checkpoint=str(good))


def test_checkpoint_variants_load(tmp_path):
    src = RevBiFPN("s0")
    sd = src.state_dict()
    for name, obj in [("raw", sd), ("wrapped", {"state_dict": sd}),
                      ("prefixed", {"backbone." + k: v for k, v in sd.items()})]:
        path = tmp_path / f"{name}.pth.tar"
        torch.save(obj, path)
        headless = RevBiFPN("s0", num_classes=0, checkpoint=str(path))
        for k, v in headless.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)
    res = load_official_checkpoint(RevBiFPN("s0", num_classes=0, with_neck=False), sd)
    assert not res.missing_keys and not res.unexpected_keys
    assert any(k.startswith("head.") for k in res.skipped_keys)
    assert any(k.startswith("rev_stack.recomp_op.") for k in res.skipped_keys)
