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
from revbifpn_mm.core.memory import RssPeakProbe


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
    for mode in ("all", "none"):
        model.set_lean_recompute(mode)
        assert model.lean_recompute == mode
        assert all(m.lean_recompute == (mode == "all") for m in blocks)
    model.set_lean_recompute("neck")
    assert all(m.lean_recompute == (m in neck) for m in blocks)


@pytest.mark.parametrize("bad", ["trunk", "Neck", None, 1, True, False])
def test_lean_recompute_accepts_only_its_three_modes(bad):
    """One policy, three spellings: anything else (booleans included) is an error naming the valid values."""
    valid = "must be one of 'neck' \\(the default\\), 'all' or 'none'"
    with pytest.raises(ValueError, match=valid):
        RevBiFPN("s0", num_classes=0, lean_recompute=bad)
    model = RevBiFPN("s0", num_classes=0)
    with pytest.raises(ValueError, match=valid) as err:
        model.set_lean_recompute(bad)
    if isinstance(bad, bool):
        assert "use 'all' for True or 'none' for False" in str(err.value)
    assert model.lean_recompute == "neck"  # unchanged by the rejected call


def test_one_lean_recompute_default():
    """The model, the mm backbone and the policy's documentation agree on one default, 'neck'."""
    import inspect
    import pathlib
    from revbifpn_mm.models import LEAN_RECOMPUTE_MODES
    assert LEAN_RECOMPUTE_MODES == ("neck", "all", "none")
    assert inspect.signature(RevBiFPN).parameters["lean_recompute"].default == "neck"
    assert inspect.signature(RevBiFPN.set_lean_recompute).parameters["mode"].default is inspect.Parameter.empty
    src = (pathlib.Path(__file__).resolve().parents[2] / "revbifpn_mm" / "mm" / "backbone.py").read_text()
    assert 'lean_recompute: str = "neck"' in src  # the mm signature (mm may be absent here)
    assert "Off by default" not in inspect.getdoc(MBConv)


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


# --------------------------------------------------------------------------- the memory it saves
def _output_mbconvs(model):
    """The per-scale output MBConvs (stride 4, 8, 16, 32), which 'neck' makes lean."""
    return [m for m in model.rev_stack.tail.modules() if isinstance(m, MBConv)]


def _saved_in_recomputation(mode, frozen_bn, size):
    """Bytes autograd saves inside the reversible backward's recomputation of each output MBConv."""
    torch.manual_seed(0)
    model = RevBiFPN("s0", num_classes=0, drop_path_rate=0.0, lean_recompute=mode).train()
    if frozen_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    blocks, counted, open_counters = _output_mbconvs(model), {}, {}
    params = list(model.parameters())

    def pre(block, args):
        if is_recomputing() and torch.is_grad_enabled():
            open_counters[block] = SavedTensorCounter(exclude=params).__enter__()

    def post(block, args, out):
        if block in open_counters:
            c = open_counters.pop(block)
            c.__exit__(None, None, None)
            counted[blocks.index(block)] = c.nbytes

    for b in blocks:
        b.register_forward_pre_hook(pre)
        b.register_forward_hook(post)
    x = torch.randn(1 if frozen_bn else 2, 3, size, size)
    sum(o.pow(2).mean() for o in model(x)).backward()
    assert sorted(counted) == [0, 1, 2, 3], "each output MBConv is recomputed once in the backward"
    return counted, blocks, x


@pytest.mark.parametrize("frozen_bn", [True, False], ids=["frozen_bn", "train_bn"])
def test_lean_recompute_drops_the_middle_from_the_recomputation(frozen_bn):
    """'neck' keeps only the middle's input while an output MBConv is recomputed.

    Without lean recomputation the recomputed depthwise conv + BN + Hardswish keep at least
    two expanded-width maps for their backward (the BN input and the Hardswish input);
    inside the checkpoint they are not kept, so each output MBConv's recomputation must
    save at least those two maps less.
    """
    size = 128
    none, blocks, x = _saved_in_recomputation("none", frozen_bn, size)
    neck, _, _ = _saved_in_recomputation("neck", frozen_bn, size)
    for h, block in enumerate(blocks):
        side = size // 4 // 2 ** h
        width = block.dw_conv.conv.out_channels  # the expanded width Ce
        two_maps = 2 * x.shape[0] * width * side * side * x.element_size()
        print(f"output MBConv {h}: saved in its recomputation {none[h] / 1e6:.2f} MB ('none') -> "
              f"{neck[h] / 1e6:.2f} MB ('neck'); two Ce maps = {two_maps / 1e6:.2f} MB")
        assert neck[h] <= none[h] - two_maps, (h, neck[h], none[h], two_maps)


_PEAK_CODE = """
import json, sys
from revbifpn_mm.core.memory import RssPeakProbe
probe = RssPeakProbe()  # before the model's allocations: pins glibc's mmap threshold
import torch
from revbifpn_mm.models import RevBiFPN
torch.set_num_threads(1)
torch.manual_seed(0)
fold = {"True": True, "False": False}.get(sys.argv[3], sys.argv[3])
model = RevBiFPN("s0", num_classes=0, drop_path_rate=0.0, lean_recompute=sys.argv[1], fold_frozen_bn=fold).train()
for m in model.modules():  # the detection setting: frozen BN, float32 residual streams ('auto')
    if isinstance(m, torch.nn.BatchNorm2d):
        m.eval()
x = torch.randn(1, 3, int(sys.argv[2]), int(sys.argv[2]))
loss = lambda: sum(o.pow(2).mean() for o in model(x))
loss().backward()  # warm-up: gradients allocated, allocator settled
l = loss()
probe.reset()
l.backward()
print(json.dumps(probe.read()))
"""


def _backward_peak(mode, size, fold="auto"):
    import json
    import os
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _PEAK_CODE, mode, str(size), str(fold)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fold", [False, "auto"])
def test_lean_recompute_lowers_the_peak_of_the_backward(fold):
    """CPU peak working set of the reversible backward of S0 at 512x512 (frozen BN, fp32 streams).

    Each reading runs in a fresh process (the peak counter is per process, and the
    allocator's history shifts it). At this size the stride-4 output MBConv's
    recomputation sets the peak, so 'neck' must lower it clearly. With BN not folded (the
    GPU default) the lean path also drops the BN outputs: at least 10 % less, and at least
    one expanded-width map of that block, the smallest thing it removes there (measured:
    23.1 -> 15.7 MB). Folding frozen BN (the CPU default) removes those BN outputs by
    itself, which lowers the 'none' reading (measured: 17.7 -> 15.7 MB, 11 %); 'neck' must
    still lower the peak by at least 5 %.
    """
    size = 512
    if not RssPeakProbe.available():
        pytest.skip("peak working set readings need Linux /proc/self/clear_refs and glibc")
    none, neck = _backward_peak("none", size, fold), _backward_peak("neck", size, fold)
    model = RevBiFPN("s0", num_classes=0)
    one_map = _output_mbconvs(model)[0].dw_conv.conv.out_channels * (size // 4) ** 2 * 4
    print(f"S0 {size}x{size}, fold_frozen_bn={fold}, backward peak working set: 'none' {none / 1e6:.1f} MB, "
          f"'neck' {neck / 1e6:.1f} MB ({1 - neck / none:.0%} less); one stride-4 Ce map {one_map / 1e6:.1f} MB")
    if fold is False:
        assert neck <= 0.9 * none, (neck, none)
        assert none - neck >= one_map, (none - neck, one_map)
    else:
        assert neck <= 0.95 * none, (neck, none)
