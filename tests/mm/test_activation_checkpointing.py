"""mmengine's ``activation_checkpointing`` on backbone stages whose inputs do not require grad.

An alternative users ask about instead of a reversible backbone: the Runner's config key
``activation_checkpointing = ['backbone.layer2', ...]`` (mmengine 0.10.7,
``mmengine.runner.turn_on_activation_checkpointing``) wraps each listed module's forward in
``torch.utils.checkpoint.checkpoint(forward, *args)`` without ``use_reentrant``, and torch
still takes the reentrant variant then. That variant's output requires grad only if one of its
*tensor* arguments does. So a stage after frozen ones (ResNet ``layer2-4`` with
``frozen_stages=1``), or a stage called with a list of tensors (HRNet ``stage2-4``), returns
outputs cut from the graph: its parameters, and those of every module before it, get no
gradient, silently (a warning at most). These tests pin that upstream behaviour as found, next
to the control without checkpointing; if they fail, mmengine or torch changed and the pitfall
line in ``docs/benchmarks.md`` needs revisiting.
"""
import warnings

import pytest

pytest.importorskip("mmdet")
import torch  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = pytest.mark.mm


def _grads_after_step(backbone: nn.Module, x: torch.Tensor, checkpointed=()):
    """Parameter name -> whether it got a non-zero gradient from one step of backbone + a trainable head."""
    from mmengine.runner import turn_on_activation_checkpointing
    if checkpointed:
        turn_on_activation_checkpointing(backbone, list(checkpointed))
    head_scale = nn.Parameter(torch.ones(()))  # stands in for a trainable neck / head
    backbone.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's use_reentrant / "None of the inputs" warnings
        outs = backbone(x)
        loss = sum((o * head_scale).pow(2).mean() for o in outs)
        loss.backward()
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for n, p in backbone.named_parameters() if p.requires_grad}


def _resnet(mm_build):
    torch.manual_seed(0)
    return mm_build(dict(type="ResNet", depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                     frozen_stages=1, norm_eval=True))


def _hrnet(mm_build):
    torch.manual_seed(0)
    extra = dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(16,)),
        stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(8, 16)),
        stage3=dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
        stage4=dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1),
                    num_channels=(8, 16, 32, 64)))
    return mm_build(dict(type="HRNet", extra=extra))


def _stage_got_grads(grads, prefix):
    stage = [g for n, g in grads.items() if n.startswith(prefix)]
    assert stage, f"no trainable parameters under {prefix}"
    return stage


def test_mmengine_reentrant_checkpointing_drops_frozen_input_stage_grads_resnet(mm_build):
    x = torch.randn(1, 3, 64, 64)
    plain = _grads_after_step(_resnet(mm_build), x)
    for layer in ("layer2", "layer3", "layer4"):
        assert all(_stage_got_grads(plain, layer)), f"{layer} should train without checkpointing"
    ckpt = _grads_after_step(_resnet(mm_build), x, checkpointed=("layer2", "layer3", "layer4"))
    for layer in ("layer2", "layer3", "layer4"):
        assert not any(_stage_got_grads(ckpt, layer)), f"{layer} got gradients: upstream behaviour changed"


def test_mmengine_reentrant_checkpointing_drops_list_input_stage_grads_hrnet(mm_build):
    # nothing frozen: HRNet's stages take a list of tensors, which the reentrant variant ignores
    x = torch.randn(1, 3, 64, 64)
    plain = _grads_after_step(_hrnet(mm_build), x)
    for stage in ("stage2", "stage3", "stage4", "layer1", "conv1"):
        assert all(_stage_got_grads(plain, stage)), f"{stage} should train without checkpointing"
    ckpt = _grads_after_step(_hrnet(mm_build), x, checkpointed=("stage2", "stage3", "stage4"))
    for stage in ("stage2", "stage3", "stage4"):
        assert not any(_stage_got_grads(ckpt, stage)), f"{stage} got gradients: upstream behaviour changed"
    # the graph is cut before stage2: the stem and layer1 stop training as well
    assert not any(_stage_got_grads(ckpt, "layer1")) and not any(_stage_got_grads(ckpt, "conv1"))
