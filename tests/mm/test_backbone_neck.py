"""The mm layer: registry, backbone options, pretrained loading, the lean neck, detectors, mmseg."""
import copy
import os

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

import revbifpn_mm  # noqa: E402,F401
from revbifpn_mm.core import saved_bytes  # noqa: E402
from revbifpn_mm.mm import RevBiFPNBackbone, RevBiFPNNeck  # noqa: E402

pytestmark = pytest.mark.mm


def test_registry_builds_from_mmdet_and_mmseg(mm_build):
    from mmseg.registry import MODELS as SEG
    b1 = mm_build(dict(type="RevBiFPN", arch="s0"))
    b2 = SEG.build(dict(type="RevBiFPN", arch="s0"))
    n2 = SEG.build(dict(type="RevBiFPNNeck", in_channels=[48, 64, 128, 320]))
    assert isinstance(b1, RevBiFPNBackbone) and isinstance(b2, RevBiFPNBackbone)
    assert isinstance(n2, RevBiFPNNeck)
    assert b1.out_channels == (48, 64, 128, 320)


def test_default_is_paper_detection_backbone(mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s4"))
    assert sum(p.numel() for p in b.parameters()) == 34_454_352
    bns = [m for m in b.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(m.eps == 1e-3 for m in bns)
    t = mm_build(dict(type="RevBiFPN", arch="s0", out_type="trunk", out_indices=(1, 3),
                        norm_cfg=dict(type="BN", eps=1e-5)))
    assert t.out_channels == (64, 160)
    assert all(m.eps == 1e-5 for m in t.modules() if isinstance(m, _BatchNorm))
    with torch.no_grad():
        outs = t.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 160]


def test_unknown_arch_and_bad_options(mm_build):
    with pytest.raises(ValueError, match=r"valid archs are \['s0', 's1', 's2', 's3', 's4', 's5', 's6'\]"):
        mm_build(dict(type="RevBiFPN", arch="s7"))
    with pytest.raises(ValueError, match="frozen_stages"):
        mm_build(dict(type="RevBiFPN", arch="s0", frozen_stages=9))
    with pytest.raises(ValueError, match="out_indices"):
        mm_build(dict(type="RevBiFPN", arch="s0", out_indices=(4,)))


def test_norm_eval_keeps_bn_in_eval(mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s0", norm_eval=True))
    b.train()
    assert b.training
    assert all(not m.training for m in b.modules() if isinstance(m, _BatchNorm))
    before = [m.running_mean.clone() for m in b.modules() if isinstance(m, _BatchNorm)]
    sum(f.sum() for f in b(torch.randn(2, 3, 64, 64))).backward()
    after = [m.running_mean for m in b.modules() if isinstance(m, _BatchNorm)]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    assert all(p.grad is not None for p in b.parameters())


@pytest.mark.parametrize("budget", [{}, dict(plain_segments=3), dict(plain_segments=3, plain_from="input")],
                         ids=["reversible", "3_from_output", "3_from_input"])  # plain_from: set_policy only
@pytest.mark.parametrize("frozen", [0, 2, 6])
def test_frozen_stages_freeze_exactly_the_documented_modules(frozen, budget, mm_build):
    """At every memory budget setting too (frozen stages inside kept segments and reversible ones)."""
    b = mm_build(dict(type="RevBiFPN", arch="s0", frozen_stages=frozen, norm_eval=False,  # (mmdet default: True)
                      plain_segments=budget.get("plain_segments", 0)))  # L = 5 -> stage 6 = output MBConvs
    b.set_policy(**budget)
    b.train()
    frozen_prefixes = tuple(f"rev_stack.{i}." for k in range(1, min(frozen, 5) + 1) for i in (3 * k - 2, 3 * k - 1, 3 * k))
    if frozen >= 6:
        frozen_prefixes += ("rev_stack.recomp_op.",)
    for name, p in b.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes) if frozen_prefixes else True), name
    for name, m in b.named_modules():
        if isinstance(m, _BatchNorm):
            assert m.training == (not (name + ".").startswith(frozen_prefixes) if frozen_prefixes else True), name
    x = torch.randn(2, 3, 64, 64)
    if frozen >= 6:  # everything frozen: a constant feature extractor
        assert all(f.grad_fn is None for f in b(x))
        return
    sum(f.sum() for f in b(x)).backward()
    for name, p in b.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    # the trainable part gets the same gradients as plain autograd
    if frozen in (2,):
        ref = copy.deepcopy(b)
        ref.set_memory_mode("plain")
        b.zero_grad()
        sum(f.sum() for f in b(x)).backward()
        sum(f.sum() for f in ref(x)).backward()
        for (n, p), (_, q) in zip(b.named_parameters(), ref.named_parameters()):
            if p.requires_grad:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4 * q.grad.abs().max().item() + 1e-8)


@pytest.mark.parametrize("key,fix", [("num_ext_layers", "give arch a dict"), ("check_finite", "CheckInvalidLossHook"),
                                     ("lean_recompute", "set_policy"), ("plain_from", "set_policy")])
def test_removed_keys_name_the_fix(key, fix, mm_build):
    with pytest.raises(Exception, match=f"'{key}' is no longer a config key: .*{fix}"):
        mm_build(dict(type="RevBiFPN", arch="s0", **{key: 1}))


def test_unknown_keys_list_the_known(mm_build):
    with pytest.raises(Exception, match=r"unexpected keys \['frozen_stage'\]; it takes arch, .*frozen_stages"):
        mm_build(dict(type="RevBiFPN", arch="s0", frozen_stage=1))


def test_bad_sizes(mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s0"))
    with pytest.raises(ValueError, match="at least 32x32 pixels"):
        b(torch.randn(1, 3, 20, 64))
    with pytest.raises(ValueError, match="3-channel"):
        b(torch.randn(1, 4, 64, 64))


@pytest.mark.parametrize("arch,source", [(a, src) for src in ("compact", "full") for a in ("s0", "s1")])
@pytest.mark.parametrize("prefix", [None, "backbone."])
def test_pretrained_official_checkpoint(arch, source, prefix, tmp_path, official, mm_build):
    ckpt, exp, _ = official(arch, source)
    sd = torch.load(ckpt, weights_only=True)
    if prefix:
        ckpt = str(tmp_path / "prefixed.pth")
        torch.save({"state_dict": {prefix + k: v for k, v in sd.items()}}, ckpt)
    b = mm_build(dict(type="RevBiFPN", arch=arch, init_cfg=dict(type="Pretrained", checkpoint=ckpt)))
    b.init_weights()
    own = b.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in own), "backbone keys not loaded"
    b.eval()
    with torch.no_grad():
        feats = b(exp["input"])
    for h in range(4):
        torch.testing.assert_close(feats[h], exp[f"eval_feat_{h}"], rtol=1e-4, atol=1e-4)


def test_pretrained_errors(tmp_path, mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s0", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "x.pth"))))
    with pytest.raises(FileNotFoundError, match="model.backbone.init_cfg.checkpoint"):
        b.init_weights()
    other = tmp_path / "s1.pth"
    torch.save(mm_build(dict(type="RevBiFPN", arch="s1")).state_dict(), other)
    b = mm_build(dict(type="RevBiFPN", arch="s0", init_cfg=dict(type="Pretrained", checkpoint=str(other))))
    with pytest.raises(ValueError, match="another RevBiFPN size"):
        b.init_weights()


def test_neck_matches_hrfpn_and_saves_memory(mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s3")).eval()
    with torch.no_grad():
        feats = b(torch.randn(1, 3, 256, 192))
    lean = mm_build(dict(type="RevBiFPNNeck", in_channels=list(b.out_channels)))
    hr = mm_build(dict(type="HRFPN", in_channels=list(b.out_channels), out_channels=256))
    lean.init_weights()
    with torch.no_grad():
        for p in lean.parameters():
            p.normal_(0, 0.05)
    hr.load_state_dict(lean.state_dict())  # same parameters, same names
    inputs = [f.clone().requires_grad_() for f in feats]
    out_l = lean(inputs)
    out_h = hr(inputs)
    assert len(out_l) == 5
    for a, c in zip(out_l, out_h):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    gl = torch.autograd.grad(sum(o.sum() for o in out_l), inputs)
    gh = torch.autograd.grad(sum(o.sum() for o in out_h), inputs)
    for a, c in zip(gl, gh):
        torch.testing.assert_close(a, c, rtol=1e-3, atol=1e-3)
    m_lean = saved_bytes(lambda: lean(inputs), exclude=lean.parameters())
    m_hr = saved_bytes(lambda: hr(inputs), exclude=hr.parameters())
    assert m_lean <= m_hr / 3, (m_lean, m_hr)


def test_neck_wrong_in_channels(mm_build):
    neck = mm_build(dict(type="RevBiFPNNeck", in_channels=[48, 64, 128, 256]))
    feats = [torch.randn(1, c, 16 >> i, 16 >> i) for i, c in enumerate([48, 64, 128, 320])]
    with pytest.raises(ValueError, match=r"set neck.in_channels to the backbone's output channels"):
        neck(feats)


def test_mmdet_necks_drop_in(mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s0")).eval()
    with torch.no_grad():
        feats = b(torch.randn(1, 3, 64, 64))
        for cfg in (dict(type="HRFPN", in_channels=[48, 64, 128, 320], out_channels=32),
                    dict(type="FPN", in_channels=[48, 64, 128, 320], out_channels=32, num_outs=5)):
            outs = mm_build(cfg)(feats)
            assert len(outs) == 5 and all(o.shape[1] == 32 for o in outs)


def _detector_cfg(kind):
    from mmengine.config import Config
    base = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py" if kind == "faster" else \
        "mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"
    cfg = Config.fromfile(_resolve(base))
    model = cfg.model
    model.backbone = dict(type="RevBiFPN", arch="s0", norm_eval=True)
    model.neck = dict(type="RevBiFPNNeck", in_channels=[48, 64, 128, 320], out_channels=256)
    model.data_preprocessor.pad_size_divisor = 32
    return model


def _resolve(mm_path):
    import importlib
    pkg, rel = mm_path.split("::")
    mod = importlib.import_module(pkg)
    return os.path.join(os.path.dirname(mod.__file__), ".mim", "configs", rel)


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_detector_loss_predict_tensor(kind, mm_build):
    from mmdet.testing import demo_mm_inputs
    model = mm_build(_detector_cfg(kind))
    model.init_weights()
    packed = demo_mm_inputs(2, [[3, 128, 128], [3, 96, 160]], with_mask=kind == "mask")
    data = model.data_preprocessor(packed, True)
    losses = model.forward(**data, mode="loss")
    assert {"loss_cls", "loss_bbox", "loss_rpn_cls"} <= set(losses)
    if kind == "mask":
        assert "loss_mask" in losses
    total = sum(v.sum() for k, v in losses.items() if "loss" in k and isinstance(v, torch.Tensor)) + \
        sum(sum(x.sum() for x in v) for k, v in losses.items() if "loss" in k and isinstance(v, list))
    total.backward()
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in bb) and any(p.grad.abs().sum() > 0 for p in bb)
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed, False)
        preds = model.forward(**data, mode="predict")
        assert len(preds) == 2 and hasattr(preds[0], "pred_instances")
        feats = model.forward(**data, mode="tensor")
        assert isinstance(feats, tuple)


def test_mmseg_encoder_decoder_train_step():
    from mmseg.registry import MODELS as SEG
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    from mmengine.structures import PixelData
    register_all_modules(init_default_scope=False)
    cfg = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size_divisor=32),
        backbone=dict(type="RevBiFPN", arch="s0"),
        decode_head=dict(type="FCNHead", in_channels=[48, 64, 128, 320], in_index=(0, 1, 2, 3),
                         channels=sum([48, 64, 128, 320]), input_transform="resize_concat", kernel_size=1,
                         num_convs=1, concat_input=False, dropout_ratio=-1, num_classes=4,
                         norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = SEG.build(cfg)
    model.init_weights()
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 64, 96)))
        s.set_metainfo(dict(img_shape=(64, 96), ori_shape=(64, 96), pad_shape=(64, 96)))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)] * 2,
                                        data_samples=samples), True)
    losses = model.forward(**data, mode="loss")
    loss = sum(v for k, v in losses.items() if k.startswith("decode.loss"))
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_inference_detector_on_arbitrary_image_sizes(tmp_path):
    """mmdet's inference_detector pads to pad_size_divisor=32: any image size just works."""
    import numpy as np
    from mmdet.apis import inference_detector, init_detector
    from mmengine.config import Config
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = Config.fromfile(os.path.join(root, "configs", "quickstart", "faster_rcnn_revbifpn_s0_synthetic.py"))
    model = init_detector(cfg, checkpoint=None, device="cpu")
    for h, w in ((250, 333), (97, 171)):
        img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
        res = inference_detector(model, img)
        assert res.pred_instances.bboxes.shape[-1] == 4
        assert tuple(res.metainfo["ori_shape"]) == (h, w)


def test_norm_cfg_requires_grad_false_freezes_bn_affine(mm_build):
    b = mm_build(dict(type="RevBiFPN", arch="s0", norm_cfg=dict(type="BN", requires_grad=False)))
    bns = [m for m in b.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not p.requires_grad for m in bns for p in m.parameters())
    assert all(m.eps == 1e-3 for m in bns)
