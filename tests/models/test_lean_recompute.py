"""``lean_recompute``: the reversible backward recomputes the tail (the output MBConvs) lean.

It must change nothing but memory and time: the same gradients (bitwise) and the same BN
statistics (updated once per step) as the ordinary recomputation, and no effect outside the
reversible backward.
"""
import copy

import pytest
import torch

from revbifpn_mm.core import SavedTensorCounter
from meters import RssPeakProbe
from revbifpn_mm.models import RevBiFPN
from revbifpn_mm.models.blocks import MBConv


def _step(model, x):
    model.zero_grad(set_to_none=True)
    sum((o * o.roll(1, 1)).mean() for o in model(x)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, copy.deepcopy(model.state_dict())


@pytest.mark.parametrize("bad,hint", [("neck", "'neck' is True"), ("none", "'none' is False"),
                                      ("all", "'all' was removed"), (None, ""), (1, "")])
def test_lean_recompute_is_a_bool(bad, hint):
    model = RevBiFPN("s0", num_classes=0)
    with pytest.raises(ValueError, match="lean_recompute must be True or False") as err:
        model.set_policy(lean_recompute=bad)
    assert hint in str(err.value)
    assert model.policy.lean_recompute is True  # the default, unchanged by the rejected call


@pytest.mark.parametrize("norm_eval", [False, True])
def test_lean_recompute_gives_the_same_step(norm_eval):
    torch.manual_seed(0)
    ref = RevBiFPN("s0", num_classes=0, drop_path_rate=0.2).train()
    ref.set_policy(lean_recompute=False)
    lean = copy.deepcopy(ref)
    lean.set_policy(lean_recompute=True)
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
    print(f"lean vs ordinary recompute (norm_eval={norm_eval}): max rel gradient diff {worst:.2e}")
    assert worst == 0.0, f"lean vs ordinary recompute: max rel gradient diff {worst:.2e}"
    for k, v in sd_ref.items():  # BN statistics: updated once, identically
        torch.testing.assert_close(sd_lean[k], v, rtol=0, atol=0 if k.endswith("num_batches_tracked") else 1e-6)


@pytest.mark.parametrize("lean", [True, False])
def test_the_reversible_backward_recomputes_the_tail_lean(lean, monkeypatch):
    """Only the recomputation of the output MBConvs goes through ``lean_forward``, once each."""
    calls = []
    original = MBConv.lean_forward

    def spy(self, x):
        calls.append(self)
        return original(self, x)
    monkeypatch.setattr(MBConv, "lean_forward", spy)
    torch.manual_seed(0)
    model = RevBiFPN("s0", num_classes=0).train()
    model.set_policy(lean_recompute=lean)
    sum(o.pow(2).mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    tail = [m for m in model.rev_stack.tail.modules() if isinstance(m, MBConv)]
    assert calls == (tail if lean else [])
    model.set_memory_mode("plain")
    sum(o.pow(2).mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    assert calls == (tail if lean else [])  # plain autograd: no recomputation, nothing lean


def test_lean_forward_keeps_less_for_backward_and_computes_the_same():
    """``lean_forward`` keeps only the middle's input: at least two expanded-width maps less than
    ``forward`` (the depthwise BN input and the Hardswish input), same outputs and gradients."""
    torch.manual_seed(0)
    model = RevBiFPN("s0", num_classes=0).eval()  # frozen BN: no running statistics move here
    for h, block in enumerate(m for m in model.rev_stack.tail.modules() if isinstance(m, MBConv)):
        side = 128 // 4 // 2 ** h
        x = torch.randn(2, block.dw_conv.conv.in_channels if isinstance(block.exp_conv, torch.nn.Identity) else block.exp_conv.conv.in_channels,
                        side, side, requires_grad=True)
        params = list(block.parameters())
        res = []
        for fn in (block, block.lean_forward):
            with SavedTensorCounter(exclude=params) as c:
                y = fn(x)
            g = torch.autograd.grad(y.pow(2).sum(), [x] + params)
            res.append((c.nbytes, y.detach(), g))
        two_maps = 2 * x.shape[0] * block.dw_conv.conv.out_channels * side * side * x.element_size()
        print(f"output MBConv {h}: saved {res[0][0] / 1e6:.2f} MB (forward) -> {res[1][0] / 1e6:.2f} MB (lean)")
        assert res[1][0] <= res[0][0] - two_maps, (h, res[1][0], res[0][0], two_maps)
        assert torch.equal(res[0][1], res[1][1])
        assert all(torch.equal(a, b) for a, b in zip(res[0][2], res[1][2]))


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
_PEAK_CODE = """
import json, sys
from meters import RssPeakProbe
probe = RssPeakProbe()  # before the model's allocations: pins glibc's mmap threshold
import torch
from revbifpn_mm.models import RevBiFPN
torch.set_num_threads(1)
torch.manual_seed(0)
model = RevBiFPN("s0", num_classes=0, drop_path_rate=0.0).train()
model.set_policy(lean_recompute=sys.argv[1] == "lean")
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


def _backward_peak(mode, size):
    import json
    import os
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tools"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _PEAK_CODE, mode, str(size)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lean_recompute_lowers_the_peak_of_the_backward():
    """CPU peak working set of the reversible backward of S0 at 512x512 (frozen BN, fp32 streams).

    Each reading runs in a fresh process (the peak counter is per process, and the
    allocator's history shifts it). At this size the stride-4 output MBConv's recomputation
    sets the peak, so lean recomputation must lower it clearly: at least 10 % less, and at
    least one expanded-width map of that block, the smallest thing it removes there
    (measured: 23.1 -> 15.7 MB).
    """
    size = 512
    if not RssPeakProbe.available():
        pytest.skip("peak working set readings need Linux /proc/self/clear_refs and glibc")
    none, lean = _backward_peak("ordinary", size), _backward_peak("lean", size)
    model = RevBiFPN("s0", num_classes=0)
    block = next(m for m in model.rev_stack.tail.modules() if isinstance(m, MBConv))
    one_map = block.dw_conv.conv.out_channels * (size // 4) ** 2 * 4
    print(f"S0 {size}x{size}, backward peak working set: ordinary {none / 1e6:.1f} MB, "
          f"lean {lean / 1e6:.1f} MB ({1 - lean / none:.0%} less); one stride-4 Ce map {one_map / 1e6:.1f} MB")
    assert lean <= 0.9 * none, (lean, none)
    assert none - lean >= one_map, (none - lean, one_map)
