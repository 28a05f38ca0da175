"""Drop-in suite: mmdet's and mmseg's own HRNet tests and shipped HRNet configs, RevBiFPN swapped in.

Written anew after mmdet's ``tests/test_models/test_backbones/test_hrnet.py``, its two-stage and
single-stage detector tests, and mmseg's HRNet forward test. The configs are the installed
packages' own (``mmdet::hrnet/...``, ``mmseg::hrnet/...``). Only what names HRNet itself is
changed: the backbone ``type`` (``extra``, HRNet's architecture, becomes ``arch``, and HRNet's
ImageNet weights, ``init_cfg`` or mmseg's ``pretrained``, are dropped: no download here), the neck ``type`` and its ``in_channels``
(the backbone's channels). Every other HRNet / HRFPN argument, the heads, the data
preprocessors and the test pipelines stay as shipped: in particular the backbone's
``norm_eval`` follows the config's scope as HRNet's default does.
"""
import os

import pytest

pytest.importorskip("mmdet")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

import revbifpn_mm.mm  # noqa: E402,F401

pytestmark = [pytest.mark.mm]
ARCH = "s0"
S0 = [48, 64, 128, 320]
HRNET_ONLY = ("extra", "init_cfg")  # HRNet's architecture and ImageNet weights


def _config(mm_path):
    import importlib

    from mmengine.config import Config
    pkg, rel = mm_path.split("::")
    root = os.path.dirname(importlib.import_module(pkg).__file__)
    return Config.fromfile(os.path.join(root, ".mim", "configs", rel))


def _swap(model_cfg, neck_key="neck"):
    """The config's HRNet -> RevBiFPN and HRFPN -> RevBiFPNNeck, every other argument kept."""
    backbone = {k: v for k, v in model_cfg.backbone.items() if k not in HRNET_ONLY}
    assert backbone.pop("type") == "HRNet"
    model_cfg.backbone = dict(backbone, type="RevBiFPN", arch=ARCH)
    model_cfg.pop("pretrained", None)  # mmseg's spelling of HRNet's ImageNet weights
    if neck_key in model_cfg and model_cfg[neck_key].get("type") == "HRFPN":
        model_cfg[neck_key] = dict(model_cfg[neck_key], type="RevBiFPNNeck", in_channels=S0)
    return model_cfg


def _sgd(model):
    from mmengine.optim import OptimWrapper
    return OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))


# ---------------------------------------------------------------- mmdet's HRNet backbone test
def test_backbone_as_mmdet_hrnet_test(mm_build):
    model = mm_build(dict(type="RevBiFPN", arch=ARCH))
    model.init_weights()
    model.train()
    assert model.norm_eval is True  # mmdet's HRNet default
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    feats = model(torch.randn(1, 3, 256, 256))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 >> i, 64 >> i) for i, c in enumerate(S0)]
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in model.parameters())
    single = mm_build(dict(type="RevBiFPN", arch=ARCH, out_indices=(0,)))  # HRNet's multiscale_output=False
    assert [tuple(f.shape) for f in single(torch.randn(1, 3, 64, 64))] == [(1, 48, 16, 16)]


# ---------------------------------------------------------------- mmdet's detector tests
def _det_inputs(with_mask):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    return demo_mm_inputs(1, [[3, 100, 140]], num_items=[3], with_mask=with_mask)


@pytest.mark.parametrize("config", [
    "mmdet::hrnet/faster-rcnn_hrnetv2p-w18-1x_coco.py",
    "mmdet::hrnet/mask-rcnn_hrnetv2p-w18-1x_coco.py",
    "mmdet::hrnet/fcos_hrnetv2p-w18-gn-head_4xb4-1x_coco.py",
], ids=["faster_rcnn", "mask_rcnn", "fcos"])
def test_shipped_hrnet_detector_trains_a_step_and_predicts(config, mm_build):
    cfg = _config(config)
    model = mm_build(_swap(cfg.model))
    assert model.backbone.norm_eval is True  # the config relies on HRNet's mmdet default
    model.init_weights()
    packed = _det_inputs(with_mask="mask" in config)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    losses = model.train_step(packed, _sgd(model))
    assert losses["loss"].isfinite(), losses
    moved = [not torch.equal(a, p) for a, p in zip(before, model.backbone.parameters())]
    assert all(moved), f"{moved.count(False)} backbone tensors did not move"
    model.eval()
    with torch.no_grad():
        preds = model.test_step(packed)
    assert len(preds) == 1 and hasattr(preds[0], "pred_instances")
    assert preds[0].pred_instances.bboxes.shape[-1] == 4


# ---------------------------------------------------------------- mmseg's HRNet forward test
def test_shipped_hrnet_segmentor_runs_mmseg_test_pipeline(tmp_path):
    pytest.importorskip("mmseg")
    import mmcv
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = _config("mmseg::hrnet/fcn_hr18_4xb4-80k_ade20k-512x512.py")
    model_cfg = _swap(cfg.model)
    model_cfg.decode_head = dict(model_cfg.decode_head, type="LeanFCNHead", in_channels=S0, channels=sum(S0))
    rng = np.random.default_rng(0)
    mmcv.imwrite(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), str(tmp_path / "img.jpg"))
    mmcv.imwrite(rng.integers(0, 150, (96, 128), dtype=np.uint8), str(tmp_path / "seg.png"))
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(model_cfg)
        pipeline = Compose(cfg.test_pipeline)
        sample = pipeline(dict(img_path=str(tmp_path / "img.jpg"), seg_map_path=str(tmp_path / "seg.png"),
                               reduce_zero_label=True, seg_fields=[]))
    assert model.backbone.norm_eval is False  # mmseg's HRNet default (the config sets it too)
    assert tuple(sample["inputs"].shape[-2:]) == (512, 683)  # the pipeline's Resize, not a multiple of 32
    model.init_weights()
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(pseudo_collate([sample]), False)
        feats = model.extract_feat(data["inputs"])
        preds = model.test_step(pseudo_collate([sample]))
    assert [tuple(f.shape[-2:]) for f in feats] == [(128, 171), (64, 86), (32, 43), (16, 22)]  # HRNet's shapes
    assert tuple(preds[0].pred_sem_seg.data.shape) == (1, 96, 128)  # back at the original size
