"""``LeanFCNHead`` computes mmseg's HRNet ``FCNHead``, without its full-width stride-4 tensors.

The reference is mmseg's own ``FCNHead`` in the HRNet setting (resize_concat of four
levels, one 1x1 ConvModule, classifier), sharing the lean head's state dict.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("mmseg")
import torch  # noqa: E402
from mmseg.models.decode_heads import FCNHead  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import revbifpn_mm.mm  # noqa: E402,F401
from revbifpn_mm.core import SavedTensorCounter  # noqa: E402
from revbifpn_mm.mm.decode_head import LeanFCNHead  # noqa: E402


pytestmark = [pytest.mark.mm]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
S2 = [96, 128, 256, 640]  # RevBiFPN-S2 out_channels


def head_cfg(**kw):
    """mmseg's fcn_hr18 decode head with RevBiFPN-S2 channels."""
    cfg = dict(in_channels=S2, in_index=(0, 1, 2, 3), channels=sum(S2), input_transform="resize_concat",
               kernel_size=1, num_convs=1, concat_input=False, dropout_ratio=-1, num_classes=19,
               norm_cfg=dict(type="BN", requires_grad=True), align_corners=False)
    cfg.update(kw)
    return cfg


def make_pair(dtype=torch.float32, chunk_channels=256, **kw):
    """(FCNHead, LeanFCNHead) with the same random state (running stats included)."""
    torch.manual_seed(0)
    ref = FCNHead(**head_cfg(**kw))
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if name.endswith(("running_var", "bn.weight")):
                t.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "bias")):
                t.normal_(0.0, 0.5)
            elif name.endswith("weight"):
                t.normal_(0.0, 0.05)
    lean = LeanFCNHead(chunk_channels=chunk_channels, **head_cfg(**kw))
    lean.load_state_dict(ref.state_dict())
    return ref.to(dtype), lean.to(dtype)


def make_feats(n=2, size=16, dtype=torch.float32, channels=S2):
    """Backbone outputs at strides 4, 8, 16, 32 of a (4 * size)^2 image."""
    torch.manual_seed(1)
    return [torch.randn(n, c, size >> i, size >> i, dtype=dtype, requires_grad=True)
            for i, c in enumerate(channels)]


def _grads(head, feats, out, g):
    params = [p for _, p in head.named_parameters()]
    return torch.autograd.grad(out, feats + params, g)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kw", [dict(), dict(dropout_ratio=0.1), dict(align_corners=True),
                                dict(norm_cfg=None), dict(act_cfg=None)],
                         ids=["hrnet", "dropout", "align_corners", "no_norm", "no_act"])
def test_outputs_equal_fcnhead_float32(training, kw):
    ref, lean = make_pair(chunk_channels=100, **kw)  # 100: chunks that do not divide 1120
    ref.train(training)
    lean.train(training)
    feats = make_feats()
    torch.manual_seed(7)  # the same dropout mask for both
    want = ref(feats)
    torch.manual_seed(7)
    got = lean(feats)
    assert got.shape == want.shape == (2, 19, 16, 16)
    assert want.abs().max() > 0.5  # not a near-zero output that any head would match
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kw", [dict(), dict(dropout_ratio=0.1), dict(norm_cfg=None)],
                         ids=["hrnet", "dropout", "no_norm"])
@pytest.mark.parametrize("chunk", [100, 4096])
def test_gradients_and_running_stats_equal_fcnhead(training, kw, chunk):
    """Float64, so that any formula slip shows far above round-off."""
    ref, lean = make_pair(torch.float64, chunk_channels=chunk, **kw)
    ref.train(training)
    lean.train(training)
    feats = make_feats(dtype=torch.float64)
    torch.manual_seed(7)
    want = ref(feats)
    torch.manual_seed(7)
    got = lean(feats)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(want)
    names = [f"input{i}" for i in range(len(feats))] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, _grads(lean, feats, got, g), _grads(ref, feats, want, g)):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
    # buffers: running statistics moved exactly once, as FCNHead's BN moved them
    for (name, a), b in zip(lean.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
    if training and kw.get("norm_cfg", True) is not None:
        assert int(lean.convs[0].bn.num_batches_tracked) == 1


def test_state_dict_is_fcnhead_state_dict_both_ways():
    ref, lean = make_pair()
    assert list(lean.state_dict()) == list(ref.state_dict())
    assert "convs.0.conv.weight" in lean.state_dict() and "conv_seg.weight" in lean.state_dict()
    fresh_ref, fresh_lean = FCNHead(**head_cfg()), LeanFCNHead(**head_cfg())
    fresh_ref.load_state_dict(lean.state_dict(), strict=True)
    fresh_lean.load_state_dict(ref.state_dict(), strict=True)
    for a, b in zip(fresh_ref.state_dict().values(), fresh_lean.state_dict().values()):
        assert torch.equal(a, b)


def test_built_through_mmseg_registry():
    from mmseg.registry import MODELS
    head = MODELS.build(dict(head_cfg(), type="LeanFCNHead"))
    assert type(head) is LeanFCNHead and isinstance(head, FCNHead)


@pytest.mark.parametrize("kw,match", [
    (dict(num_convs=2), "num_convs"), (dict(kernel_size=3), "kernel_size"),
    (dict(concat_input=True), "concat_input"), (dict(dilation=2), "dilation"),
    (dict(chunk_channels=0), "chunk_channels"),
])
def test_unsupported_settings_are_refused_with_the_fix(kw, match):
    with pytest.raises(ValueError, match=match) as err:
        LeanFCNHead(**head_cfg(**kw))
    assert "FCNHead" in str(err.value) or "positive" in str(err.value)


def test_multiple_select_is_refused():
    with pytest.raises(ValueError, match="resize_concat"):
        LeanFCNHead(**head_cfg(input_transform="multiple_select"))


def test_wrong_input_channels_name_the_fix():
    _, lean = make_pair()
    feats = make_feats(channels=[48, 64, 128, 320])
    with pytest.raises(ValueError, match=r"in_channels=\[96, 128, 256, 640\].*out_channels"):
        lean(feats)


def _saved(head, feats):
    with SavedTensorCounter(exclude=list(head.parameters())) as counter:
        out = head(feats)
    del out
    return counter.nbytes


@pytest.mark.parametrize("kw", [dict(), dict(dropout_ratio=0.1)], ids=["hrnet", "dropout"])
def test_keeps_no_full_width_tensor_for_backward(kw):
    """FCNHead keeps the concat, the conv output and the ReLU output (and the dropout
    output): >= 3 full-width stride-4 tensors. The lean head keeps its inputs and
    per-channel vectors only."""
    ref, lean = make_pair(**kw)
    ref.train()
    lean.train()
    feats = make_feats(n=2, size=32)
    full = 2 * sum(S2) * 32 * 32 * 4  # one float32 stride-4 tensor at sum(in_channels) channels
    inputs = sum(f.numel() * 4 for f in feats)
    small = 8 * 2 * sum(S2) * 4  # a few per-channel vectors and the N x C dropout mask
    lean_bytes, ref_bytes = _saved(lean, feats), _saved(ref, feats)
    print(f"saved for backward: FCNHead {ref_bytes / 2**20:.2f} MiB, LeanFCNHead {lean_bytes / 2**20:.2f} MiB "
          f"(one full-width tensor {full / 2**20:.2f} MiB, inputs {inputs / 2**20:.2f} MiB)")
    assert ref_bytes >= 3 * full  # FCNHead's way is far above the bound
    assert lean_bytes <= inputs + small


class _WidestStride4Tensor(TorchDispatchMode):
    """Records the most channels of any N x C x H x W tensor an op returns at ``size``."""

    def __init__(self, size):
        super().__init__()
        self.size, self.channels = tuple(size), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.dim() == 4 and tuple(t.shape[2:]) == self.size:
                self.channels = max(self.channels, t.shape[1])
        return out


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_never_builds_a_full_width_stride4_tensor(training):
    """Forward and backward work on blocks of chunk_channels channels: no op returns a
    stride-4 tensor wider than a block (FCNHead: the concatenation's sum(in_channels))."""
    ref, lean = make_pair(chunk_channels=128, dropout_ratio=0.1)
    ref.train(training)
    lean.train(training)
    feats = make_feats(n=2, size=32)
    widest = {}
    for name, head in (("FCNHead", ref), ("LeanFCNHead", lean)):
        with _WidestStride4Tensor((32, 32)) as rec:
            out = head(feats)
            out.backward(torch.ones_like(out))
        widest[name] = rec.channels
    assert widest["FCNHead"] == sum(S2)
    assert widest["LeanFCNHead"] == 128


def test_inference_without_grad_matches_and_saves_nothing():
    ref, lean = make_pair()
    ref.eval()
    lean.eval()
    feats = [f.detach() for f in make_feats()]
    with torch.no_grad():
        torch.testing.assert_close(lean(feats), ref(feats), rtol=0, atol=1e-5)
        assert _saved(lean, feats) == 0


WORLD = 2


def test_sync_bn_under_ddp_equals_global_batch_bn(tmp_path, free_port):
    """Two gloo ranks (1 and 3 images), SyncBN in the lean head, DDP: equal to FCNHead with
    BN on the global batch.

    The lean head gathers the batch statistics itself (torch's SyncBN kernels, which the
    CPU stand-ins count, must not run) and all-reduces its gradient reductions in the
    backward, interleaved with DDP's gradient all-reduces.
    """
    ref, lean = make_pair(torch.float64)
    feats = [f.detach() for f in make_feats(n=2 * WORLD, dtype=torch.float64)]
    torch.manual_seed(3)
    g = torch.randn(2 * WORLD, 19, 16, 16, dtype=torch.float64)
    sizes = [1, 3]  # images per rank
    torch.save({"state": lean.state_dict(), "feats": feats, "g": g, "cfg": head_cfg(), "sizes": sizes},
               tmp_path / "in.pt")

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_port", str(free_port), "tests/mm/seg_head_sync_worker.py",
           str(tmp_path / "in.pt"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "mm"), ROOT, os.environ.get("PYTHONPATH", "")])}
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"LeanFCNHead SyncBN under DDP hung: {err.stdout!s}{err.stderr!s}"[-3000:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    ref.train()
    x = [f.clone().requires_grad_() for f in feats]
    want = ref(x)
    (want * g).sum().backward()
    for r, res in enumerate(ranks):
        assert res["calls"] == {"batch_norm_stats": 0, "batch_norm_backward_reduce": 0}
        sl = slice(sum(sizes[:r]), sum(sizes[:r + 1]))
        torch.testing.assert_close(res["out"], want[sl].detach(), rtol=1e-10, atol=1e-12)
        for i, gx in enumerate(res["input_grads"]):
            torch.testing.assert_close(gx, x[i].grad[sl], rtol=1e-9, atol=1e-11)
        for name, p in ref.named_parameters():  # DDP averages over ranks: the global sum / WORLD
            torch.testing.assert_close(res["grads"][name] * WORLD, p.grad, rtol=1e-9, atol=1e-11,
                                       msg=lambda m: f"rank {r} {name}: {m}")
        for name, b in ref.state_dict().items():
            torch.testing.assert_close(res["state"][name], b, rtol=1e-12, atol=1e-12,
                                       msg=lambda m: f"rank {r} {name}: {m}")


MMDET_ONLY = """
import sys
sys.modules['mmseg'] = None  # an mmdet-only install: any import of mmseg raises ImportError
import revbifpn_mm.mm
from mmengine.registry import MODELS
assert MODELS.get('RevBiFPN') is not None and MODELS.get('LeanFCNHead') is None
try:
    import revbifpn_mm.mm.decode_head
except ImportError as err:
    print('ImportError:', err)
"""


def test_the_mm_layer_works_without_mmseg():
    """Without mmseg the mm layer registers the backbone and neck; the head, which is an mmseg
    decode head, is registered only where mmseg is installed."""
    out = subprocess.run([sys.executable, "-c", MMDET_ONLY], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ImportError:" in out.stdout and "mmseg" in out.stdout


def test_autocast_runs_the_reductions_in_the_autocast_dtype():
    """Under (CPU bfloat16) autocast the head returns what FCNHead returns: autocast's dtype,
    as close to the float32 result as FCNHead's, and backpropagates."""
    ref, lean = make_pair()
    feats = make_feats()
    want32 = ref(feats).detach()
    for head in (ref, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(feats)
        assert out.dtype == torch.bfloat16
        rel = ((out.float() - want32).abs().max() / want32.abs().max()).item()
        assert rel < 0.02, (type(head).__name__, rel)
        out.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters())
