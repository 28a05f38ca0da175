"""What a user meets in the first hour: hook-based and tracing tools see the model, the neck takes
HRFPN's arguments, and mistakes carried over from HRNet / ResNet configs get errors that name the fix."""
import contextlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("mmdet")

from revbifpn_mm.mm import RevBiFPNNeck  # noqa: E402
from revbifpn_mm.models import RevBiFPN  # noqa: E402

pytestmark = pytest.mark.mm
ROOT = Path(__file__).resolve().parents[2]
_nothing = contextlib.nullcontext


def test_every_backbone_conv_runs_through_its_module_call():
    """Feature taps, Grad-CAM, pruning / quantization tools and hook-based FLOP counters work through
    module hooks: on the CPU, in eval(), every Conv2d of the backbone must run its own forward."""
    model = RevBiFPN("s0", num_classes=0).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fired = set()
    for c in convs:
        c.register_forward_hook(lambda mod, *a: fired.add(id(mod)))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(convs) == 429 and len(fired) == len(convs), f"{len(convs) - len(fired)} of {len(convs)} convs unseen"


def test_forward_hooks_count_every_mac_of_the_backbone(mac_counter):
    """A hook-based FLOP counter (MACs of each Conv2d from its module's input and output) counts
    exactly what the dispatcher sees: S3 in eval() on the CPU."""
    model = RevBiFPN("s3", num_classes=0).eval()
    hooked = [0]

    def count(mod, inputs, out):
        hooked[0] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(count)
    with torch.no_grad(), mac_counter() as seen:
        model(torch.randn(1, 3, 128, 192))
    assert hooked[0] == seen.macs > 0, (hooked[0], seen.macs)


def test_mmengine_complexity_info_traces_backbone_and_neck_in_eval():
    """mmengine's get_model_complexity_info (what mmdet's get_flops.py calls) traces with jit; the neck
    must not take its checkpoint path in eval() (it did whenever grad was enabled)."""
    from mmengine.analysis import get_model_complexity_info
    backbone = RevBiFPN("s3", num_classes=0)
    model = nn.Sequential(backbone, RevBiFPNNeck(in_channels=list(backbone.out_channels))).eval()
    info = get_model_complexity_info(model, input_shape=(3, 128, 128), show_table=False, show_arch=False)
    assert info["flops"] > 0 and info["params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_mmdets_get_flops_tool_on_a_detector_config(synthetic_coco):
    """The command in docs/benchmarks.md: mmdet's own tools/analysis_tools/get_flops.py on a RevBiFPN
    detector config, over a dataset in COCO layout."""
    import mmdet
    tool = Path(mmdet.__file__).parent / ".mim" / "tools" / "analysis_tools" / "get_flops.py"
    root = synthetic_coco(2, 2, (128, 128), seed=7)
    out = subprocess.run([sys.executable, str(tool), str(ROOT / "configs" / "quickstart" /
                                                         "faster_rcnn_revbifpn_s0_synthetic.py"),
                          "--num-images", "2", "--cfg-options", f"val_dataloader.dataset.data_root={root}"],
                         capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "Flops:" in out.stdout and "Params: 4.191M" in out.stdout, out.stdout[-2000:]


def test_the_neck_takes_every_hrfpn_argument():
    from mmdet.models.necks import HRFPN
    ours = set(inspect.signature(RevBiFPNNeck.__init__).parameters)
    theirs = set(inspect.signature(HRFPN.__init__).parameters)
    assert theirs <= ours, theirs - ours


@pytest.mark.parametrize("kw", [dict(norm_cfg=dict(type="BN")), dict(with_cp=True), dict(stride=2, num_outs=4)])
def test_the_neck_computes_hrfpn_with_its_arguments(kw, mm_build):
    """With HRFPN's norm_cfg (unused by HRFPN itself: a warning says so), with_cp or stride the neck
    still computes HRFPN's outputs and gradients (HRFPN's state dict loaded), in training mode."""
    torch.manual_seed(0)
    chans = [8, 16, 24, 32]
    hr = mm_build(dict(type="HRFPN", in_channels=chans, out_channels=16, **kw)).train()
    with pytest.warns(UserWarning, match="not used") if "norm_cfg" in kw else _nothing():
        ours = mm_build(dict(type="RevBiFPNNeck", in_channels=chans, out_channels=16, **kw)).train()
    ours.load_state_dict(hr.state_dict())
    feats = [torch.randn(2, c, 32 >> i, 32 >> i, dtype=torch.float64) for i, c in enumerate(chans)]
    hr, ours = hr.double(), ours.double()
    grads = []
    for neck in (hr, ours):
        xs = [f.clone().requires_grad_() for f in feats]
        outs = neck(xs)
        sum((o * o.roll(1, 1)).sum() for o in outs).backward()
        grads.append((outs, [x.grad for x in xs] + [p.grad for p in neck.parameters()]))
    for a, b in zip(grads[0][0], grads[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kw,fix", [
    (dict(with_cp=True), "Drop with_cp"),
    (dict(pretrained="x.pth"), "init_cfg=dict(type='Pretrained', checkpoint='x.pth')"),
    (dict(memory_mode="checkpoint"), "expected one of ['reversible', 'plain']")])
def test_keys_of_hrnet_and_resnet_configs_get_the_fix(kw, fix, mm_build):
    with pytest.raises(ValueError) as err:
        mm_build(dict(type="RevBiFPN", arch="s0", **kw))
    assert fix in str(err.value), str(err.value)
    mm_build(dict(type="RevBiFPN", arch="s0", with_cp=False, pretrained=None))  # the harmless values pass
