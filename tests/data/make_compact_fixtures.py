"""Build tests/data/revbifpn_{s0,s1}_compact.pt from ../shared/reference.

Run from the repo root: ``PYTHONPATH=tools python tests/data/make_compact_fixtures.py``.

Keeps what the equivalence tests need in a few MB: BN buffers (the parameters are
regenerated from the documented recipe and verified by hash), expected outputs, the
input gradients, the reference's sampled parameter-gradient indices with the values
of the full gradients at them, and per-parameter gradient norms.
"""
import os

import importlib.util

import torch

_spec = importlib.util.spec_from_file_location(  # the reference recipe lives in the test suite's conftest
    "conftest", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conftest.py"))
_fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fx)
DATA, SHARED_REF, SPECS = _fx.DATA, _fx.SHARED_REF, _fx.SPECS
loss_weights, regenerate_parameters, state_dict_sha256 = _fx.loss_weights, _fx.regenerate_parameters, _fx.state_dict_sha256

KEEP = ["meta", "input", "eval_feat_0", "eval_feat_1", "eval_feat_2", "eval_feat_3", "eval_logits",
        "train_loss", "grad_input", "param_names", "bn_layer_names", "bn_layer_channels",
        "bn_after_train_step_single_update_running_mean", "bn_after_train_step_single_update_running_var",
        "bn_after_train_step_single_update_num_batches_tracked", "norm_eval_loss", "norm_eval_grad_input",
        "norm_eval_param_grad_stats", "param_grad_sample_count", "param_grad_sample_index",
        "norm_eval_param_grad_sample_value"]

for arch in SPECS:
    exp = torch.load(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected.pt"), weights_only=True)
    sd = torch.load(os.path.join(SHARED_REF, f"revbifpn_{arch}_random_init.pth.tar"), weights_only=True)
    grads = torch.load(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected_param_grads.pt"), weights_only=True)
    regen = regenerate_parameters(arch).state_dict()
    params = [k for k in sd if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(regen[k], sd[k]) for k in params), "recipe does not reproduce the parameters"
    shapes = [exp[f"loss_weight_feat_{h}"].shape for h in range(4)] + \
        ([exp["loss_weight_logits"].shape] if "eval_logits" in exp else [])
    names = [f"loss_weight_feat_{h}" for h in range(4)] + (["loss_weight_logits"] if "eval_logits" in exp else [])
    assert all(torch.equal(w, exp[n]) for w, n in zip(loss_weights(arch, shapes), names))
    out = {k: exp[k] for k in KEEP if k in exp}
    out["buffers"] = {k: v for k, v in sd.items() if k not in params}
    out["checkpoint_keys"] = list(sd)
    out["checkpoint_sha256"] = state_dict_sha256(sd)
    idx, cnt = exp["param_grad_sample_index"].long(), exp["param_grad_sample_count"].long()
    vals, pos = [], 0
    for name, c in zip(exp["param_names"], cnt.tolist()):
        vals.append(grads[name].reshape(-1)[idx[pos:pos + c]])
        pos += c
    out["train_param_grad_sample_value"] = torch.cat(vals)
    out["train_param_grad_l2"] = torch.stack([grads[n].double().norm() for n in exp["param_names"]])
    out["train_param_grad_global_max"] = max(g.abs().max() for g in grads.values())
    path = os.path.join(DATA, f"revbifpn_{arch}_compact.pt")
    torch.save(out, path)
    print(path, os.path.getsize(path), "bytes")
