"""Equivalence with the official implementation, elementwise, on its stored fixtures.

Each test runs on the compact copy in tests/data (always) and on the full fixtures in
../shared/reference when they exist (CI). Tolerances are those recommended in the
reference README (20-50x the official code's own run-to-run spread).
"""
import pytest
import torch
from torch import nn

from revbifpn_mm.models import RevBiFPN

# Parameters whose true train-mode gradient is exactly zero (reference README): absolute check only.
ZERO_GRAD = {
    "s0": {f"rev_stack.15.g.xform_{p}.0.project_conv.norm.bias" for p in ("0_1", "0_2", "1_2")}
    | {f"head.pyramid_heads.{h}.project_conv.norm.bias" for h in range(3)},
    "s1": {f"rev_stack.15.g.xform_{p}.0.project_conv.norm.bias" for p in ("0_1", "0_2", "1_2")},
}
#: (arch, source): the compact copy always, the full reference files where they are (CI).
CASES = [(a, src) for src in ("compact", "full") for a in ("s0", "s1")]
NUM_CLASSES = {"s0": 1000, "s1": 0}


@pytest.fixture
def fixture_cache(official):
    return official


def _model(arch, ckpt, mode="reversible"):
    nc = NUM_CLASSES[arch]
    m = RevBiFPN(arch, num_classes=nc, checkpoint=ckpt, memory_mode=mode)
    if m.head is not None:
        m.head.dropout.p = 0.0
    return m


def _loss(arch, model, x, loss_weights):
    feats = model.forward_features(x)
    outs = list(feats) + ([model.head(feats)] if model.head is not None else [])
    ws = loss_weights(arch, [o.shape for o in outs])
    return sum((o * w).sum() for o, w in zip(outs, ws))


@pytest.mark.parametrize("arch,source", CASES)
def test_eval_outputs_match_official(arch, source, fixture_cache):
    ckpt, exp, _ = fixture_cache(arch, source)
    model = _model(arch, ckpt).eval()
    with torch.no_grad():
        feats = model.forward_features(exp["input"])
        for h in range(4):
            torch.testing.assert_close(feats[h], exp[f"eval_feat_{h}"], rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"{arch} eval_feat_{h}: {m}")
        if model.head is not None:
            torch.testing.assert_close(model.head(feats), exp["eval_logits"], rtol=1e-4, atol=1e-4)


def _check_param_grads(arch, model, exp, full_grads, stats_key=None):
    names = exp["param_names"]
    params = dict(model.named_parameters())
    assert set(names) == set(params), "parameter names differ from the official ones"
    if full_grads is not None:
        gmax = max(g.abs().max().item() for g in full_grads.values())
        for n in names:
            ref, got = full_grads[n], params[n].grad
            assert got is not None, f"{n} received no gradient"
            if n in ZERO_GRAD[arch]:
                assert got.abs().max().item() <= 1e-4 * gmax, n
                continue
            torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-4 * gmax, msg=lambda m: f"{n}: {m}")
            if ref.norm() > 1e-6 * gmax:
                rel = ((got - ref).norm() / ref.norm()).item()
                assert rel <= 1e-3, f"{n}: relative L2 gradient error {rel:.2e}"
        return
    # compact: the reference's sampled elements (values of the full gradients) and L2 norms
    idx, cnt = exp["param_grad_sample_index"].long(), exp["param_grad_sample_count"].long()
    values = exp["train_param_grad_sample_value"]
    gmax = float(exp["train_param_grad_global_max"])
    pos = 0
    for k, (n, c) in enumerate(zip(names, cnt.tolist())):
        got = params[n].grad
        assert got is not None, f"{n} received no gradient"
        sample = got.reshape(-1)[idx[pos:pos + c]]
        ref = values[pos:pos + c]
        pos += c
        if n in ZERO_GRAD[arch]:
            assert sample.abs().max().item() <= 1e-4 * gmax, n
            continue
        torch.testing.assert_close(sample, ref, rtol=1e-2, atol=1e-4 * gmax, msg=lambda m: f"{n}: {m}")
        ref_l2 = exp["train_param_grad_l2"][k].item()
        if ref_l2 > 1e-6 * gmax:
            assert abs(got.double().norm().item() - ref_l2) <= 1e-3 * ref_l2, f"{n}: gradient norm differs"


@pytest.mark.parametrize("arch,source", CASES)
@pytest.mark.parametrize("mode", ["reversible", "plain"])
def test_train_step_matches_official(arch, source, mode, fixture_cache, reference_loss_weights):
    ckpt, exp, full_grads = fixture_cache(arch, source)
    model = _model(arch, ckpt, mode).train()
    x = exp["input"].clone().requires_grad_(True)
    loss = _loss(arch, model, x, reference_loss_weights)
    assert abs(loss.item() - exp["train_loss"].item()) <= 1e-2
    loss.backward()
    gref = exp["grad_input"]
    torch.testing.assert_close(x.grad, gref, rtol=0, atol=1e-3 * gref.abs().max().item())
    _check_param_grads(arch, model, exp, full_grads)
    # standard BN semantics: one running-stat update per step (not the official double update)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == exp["bn_layer_channels"].tolist()
    torch.testing.assert_close(torch.cat([b.running_mean for b in bns]),
                               exp["bn_after_train_step_single_update_running_mean"], rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.cat([b.running_var for b in bns]),
                               exp["bn_after_train_step_single_update_running_var"], rtol=0, atol=1e-4)
    assert torch.equal(torch.stack([b.num_batches_tracked for b in bns]),
                       exp["bn_after_train_step_single_update_num_batches_tracked"])


@pytest.mark.parametrize("arch,source", CASES)
def test_norm_eval_step_matches_official(arch, source, fixture_cache, reference_loss_weights):
    ckpt, exp, _ = fixture_cache(arch, source)
    model = _model(arch, ckpt).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    x = exp["input"].clone().requires_grad_(True)
    loss = _loss(arch, model, x, reference_loss_weights)
    assert abs(loss.item() - exp["norm_eval_loss"].item()) <= 1e-2
    loss.backward()
    gref = exp["norm_eval_grad_input"]
    torch.testing.assert_close(x.grad, gref, rtol=0, atol=1e-3 * gref.abs().max().item())
    params = dict(model.named_parameters())
    stats = exp["norm_eval_param_grad_stats"]
    idx, cnt = exp["param_grad_sample_index"].long(), exp["param_grad_sample_count"].long()
    sampled_ref = exp["norm_eval_param_grad_sample_value"]
    tol = 1e-4 * sampled_ref.abs().max().item()
    pos = 0
    for k, (n, c) in enumerate(zip(exp["param_names"], cnt.tolist())):
        g = params[n].grad.double()
        s, a, l2 = stats[k].tolist()
        assert abs(g.abs().sum().item() - a) <= 1e-3 * a + 1e-12, f"{n}: abs-sum"
        assert abs(g.norm().item() - l2) <= 1e-3 * l2 + 1e-12, f"{n}: L2"
        assert abs(g.sum().item() - s) <= 1e-3 * a + 1e-12, f"{n}: sum"
        torch.testing.assert_close(params[n].grad.reshape(-1)[idx[pos:pos + c]], sampled_ref[pos:pos + c],
                                   rtol=1e-2, atol=tol, msg=lambda m: f"{n}: {m}")
        pos += c
