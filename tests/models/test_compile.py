"""``compile_transforms``: the transforms of the reversible call run through ``torch.compile``.

It must change nothing but the kernels that run: gradients and BN statistics as eager's (to float32
round-off, see ``TOL``), running statistics updated once per step (the compiled recomputation must
not update them a second time), drop path replayed exactly, ``memory_mode='plain'`` untouched, and a
compiler failure falls back to eager with one warning. Whole-S0 steps (64x64, batch 2) run with the
``aot_eager`` backend (Dynamo and AOTAutograd: the graphs, guards and BN handling, without code
generation), inductor's fused code runs on a small container: compiling every S0 graph with inductor
takes about 20 minutes on a busy 2-core CPU (measured instead: docs/benchmarks.md).
"""
import copy
import warnings

import pytest
import torch

from revbifpn_mm.core import RecomputedPerScale, RevBlockGroup, RevResidualBlock, RevSequential, compiled
from revbifpn_mm.models import RevBiFPN
from revbifpn_mm.models.blocks import MBConv

pytestmark = pytest.mark.slow  # compilation: minutes on a busy CPU (the compiled steps: see the report)

#: Tolerance of compiled vs eager gradients and BN statistics, relative to the largest magnitude of each
#: (gradients: over all parameters, as a bias whose true gradient is 0 has only round-off to compare).
#: Compiled code reorders float32 sums (fused BN statistics, decomposed batch_norm). Measured: whole S0
#: with inductor 1.0e-5 (training BN), these tests 2.5e-6 and below; 1e-4 is 10x the worst and far
#: below what a wrong step gives (a missing term, a stale input, statistics updated twice: 1e-2 and more).
TOL = 1e-4
SIZE = 64  # the coarsest scale is 2x2: at 32x32 (1x1) training BN over 2 values is ill-conditioned


@pytest.fixture
def fresh_compile():
    compiled.reset_compiled()
    yield
    compiled.reset_compiled()


def _model(bn: str, drop_path_rate: float = 0.0, arch: str = "s0", **policy):
    torch.manual_seed(0)
    model = RevBiFPN(arch, num_classes=0, drop_path_rate=drop_path_rate, **policy).train()
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    return model


def _step(model, x, seed=1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    outs = model([x]) if isinstance(model, RevSequential) else model(x)  # a container takes a list of scales
    sum((o * o.roll(1, 1)).mean() for o in outs).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, copy.deepcopy(model.state_dict())


def _worst_rel(ref: dict, got: dict) -> float:
    """Largest difference relative to the largest reference magnitude (over all tensors: a bias whose
    true gradient is 0 has only round-off to compare)."""
    keys = [k for k, v in ref.items() if v.is_floating_point()]
    return (max((got[k].double() - ref[k].double()).abs().max().item() for k in keys)
            / max(ref[k].double().abs().max().item() for k in keys))


def _worst_stats(ref: dict, got: dict) -> float:
    """Largest running-statistics difference of any BN, in units of its running std (means) or relative
    (variances)."""
    worst = 0.0
    for k in (k for k in ref if k.endswith("running_var")):
        var, mean = ref[k].double(), k[:-len("running_var")] + "running_mean"
        worst = max(worst, ((got[k].double() - var).abs() / var).max().item(),
                    ((got[mean].double() - ref[mean].double()).abs() / var.sqrt()).max().item())
    return worst


@pytest.fixture(scope="module", autouse=True)
def _restore_backend():
    yield
    compiled.BACKEND = "inductor"
    compiled.reset_compiled()


@pytest.fixture
def backend(request):
    """The compiler backend of a test (its ``backend`` parameter). aot_eager: Dynamo and AOTAutograd
    (graphs, guards, BN-statistics handling) without code generation; inductor: the fused code itself.
    Graphs compiled by earlier tests with the same backend are reused."""
    if compiled.BACKEND != request.param:
        compiled.reset_compiled()
        compiled.BACKEND = request.param
    return request.param


@pytest.mark.parametrize("arch,bn,policy,backend", [
    ("s0", "train", {}, "aot_eager"), ("s0", "frozen", {}, "aot_eager"),
    ("s0", "train", dict(plain_segments=2), "aot_eager"),
    ("s2", "train", {}, "aot_eager"), ("s2", "frozen", {}, "aot_eager")],
    indirect=["backend"])
def test_compiled_step_matches_eager(arch, bn, policy, backend):
    eager = _model(bn, arch=arch, **policy)
    comp = copy.deepcopy(eager)
    comp.set_policy(compile_transforms=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    g_ref, sd_ref = _step(eager, x)
    g, sd = _step(comp, x)
    assert any(m in compiled._by_module for m in comp.modules()), "nothing ran compiled"
    assert compiled.compile_failure() is None, compiled.compile_failure()
    grad_rel, stat_rel = _worst_rel(g_ref, g), _worst_stats(sd_ref, sd)
    print(f"{arch} compiled ({backend}) vs eager ({bn} BN, {policy}): gradients {grad_rel:.2e}, "
          f"BN statistics {stat_rel:.2e}")
    assert grad_rel < TOL and stat_rel < TOL
    tracked = {k: v.item() for k, v in sd.items() if k.endswith("num_batches_tracked")}
    assert set(tracked.values()) == ({1} if bn == "train" else {0})  # once per step, never by the recomputation


def _tiny(bn: str) -> RevSequential:
    """One reversible residual block of MBConvs (with SE) and a recomputed MBConv tail."""
    torch.manual_seed(0)
    block = RevResidualBlock(MBConv(8, 8, 3, 1, 2.0, 0.25), MBConv(8, 8, 3, 1, 2.0, 0.25), 16)
    model = RevSequential([RevBlockGroup([block])], RecomputedPerScale([MBConv(16, 24, 3, 1, 2.0, 0.25)])).train()
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    return model


@pytest.mark.parametrize("bn", ["train", "frozen"])
@pytest.mark.parametrize("backend", ["inductor"], indirect=True)
def test_inductor_step_matches_eager(bn, backend):
    """The fused code itself (inductor), on a small reversible container: whole S0 networks take
    minutes per BN mode to compile on a busy CPU (measured instead, docs/benchmarks.md)."""
    eager = _tiny(bn)
    comp = copy.deepcopy(eager)
    comp.policy = comp.policy.replace(compile_transforms=True)
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    g_ref, sd_ref = _step(eager, x)
    g, sd = _step(comp, x)
    assert any(m in compiled._by_module for m in comp.modules()), "nothing ran compiled"
    assert compiled.compile_failure() is None, compiled.compile_failure()
    grad_rel, stat_rel = _worst_rel(g_ref, g), _worst_stats(sd_ref, sd)
    print(f"inductor vs eager ({bn} BN): gradients {grad_rel:.2e}, BN statistics {stat_rel:.2e}")
    assert grad_rel < TOL and stat_rel < TOL
    tracked = {v.item() for k, v in sd.items() if k.endswith("num_batches_tracked")}
    assert tracked == ({1} if bn == "train" else {0})


@pytest.mark.parametrize("backend", ["aot_eager"], indirect=True)
def test_compiled_drop_path_replays_exactly(backend):
    """Couplings that draw random numbers run eager, so their masks replay exactly (a mask drawn anew
    in the recomputation, or a compiled RNG, would differ by O(1)); the compiled tail matches to
    round-off. Without the tail nothing is compiled and the step is bitwise eager's."""
    eager = _model("frozen", drop_path_rate=0.3)
    comp = copy.deepcopy(eager)
    comp.set_policy(compile_transforms=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    g_ref, _ = _step(eager, x)
    g, _ = _step(comp, x)
    assert _worst_rel(g_ref, g) < TOL
    torch.manual_seed(0)
    eager = RevBiFPN("s0", num_classes=0, drop_path_rate=0.3, with_neck=False).train()
    comp = copy.deepcopy(eager)
    comp.set_policy(compile_transforms=True)
    g_ref, _ = _step(eager, x)
    g, _ = _step(comp, x)
    assert all(torch.equal(g[k], v) for k, v in g_ref.items())


def test_plain_mode_is_untouched(fresh_compile):
    eager = _model("train", memory_mode="plain")
    comp = copy.deepcopy(eager)
    comp.set_policy(compile_transforms=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    g_ref, sd_ref = _step(eager, x)
    g, sd = _step(comp, x)
    assert not compiled._by_signature  # nothing compiled
    assert all(torch.equal(g[k], v) for k, v in g_ref.items())
    assert all(torch.equal(sd[k], v) for k, v in sd_ref.items())


def test_compile_failure_falls_back_with_one_warning(fresh_compile, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    eager = _model("frozen")
    comp = copy.deepcopy(eager)
    comp.set_policy(compile_transforms=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    g_ref, _ = _step(eager, x)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        g, _ = _step(comp, x)
        _step(comp, x)
    ours = [w for w in seen if "compile_transforms" in str(w.message)]
    assert len(ours) == 1 and "no compiler here" in str(ours[0].message)
    assert compiled.compile_failure() == "RuntimeError: no compiler here"
    assert all(torch.equal(g[k], v) for k, v in g_ref.items())  # eager: bitwise


def _compile_returning(fn):
    """A stand-in for ``torch.compile`` whose compiled function is ``fn``."""
    return lambda *args, **kwargs: fn


def test_a_compiler_error_at_the_call_falls_back(fresh_compile, monkeypatch):
    """A Dynamo / backend error raised while the compiled function runs: eager result, one warning."""
    from torch._dynamo.exc import InternalTorchDynamoError

    def fails(module, x):
        raise InternalTorchDynamoError("backend fell over")

    monkeypatch.setattr(torch, "compile", _compile_returning(fails))
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    with pytest.warns(RuntimeWarning, match="backend fell over"):
        y = compiled.compiled_call(conv, x)
    assert torch.equal(y, conv(x)) and compiled.compile_failure().startswith("InternalTorchDynamoError")


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"), ValueError("a user error")])
def test_errors_that_are_not_the_compilers_propagate_and_keep_compiling(fresh_compile, monkeypatch, error):
    """Out of memory or a module's own exception is raised as is; compilation is not turned off."""
    def fails(module, x):
        raise error

    monkeypatch.setattr(torch, "compile", _compile_returning(fails))
    with pytest.raises(type(error), match=str(error)):
        compiled.compiled_call(torch.nn.Conv2d(4, 4, 1), torch.randn(1, 4, 4, 4))
    assert compiled.compile_failure() is None


def test_a_wrong_input_raises_the_eager_error_and_keeps_compiling(fresh_compile, monkeypatch):
    """A channel mismatch found while Dynamo traces (a TorchDynamoException) is re-run eager, which
    raises torch's own message; the compiler did nothing wrong, so it stays on."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    conv = torch.nn.Conv2d(4, 4, 1)
    with pytest.raises(RuntimeError, match="expected input.*to have 4 channels"):
        compiled.compiled_call(conv, torch.randn(1, 3, 4, 4))
    assert compiled.compile_failure() is None
    x = torch.randn(1, 4, 4, 4)
    assert torch.allclose(compiled.compiled_call(conv, x), conv(x))


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_compile_transforms_is_a_bool(bad):
    with pytest.raises(ValueError, match="compile_transforms must be True or False"):
        RevBiFPN("s0", num_classes=0, compile_transforms=bad)
