"""Every config in configs/ loads and builds its model; channels line up between the parts."""
import copy
import pathlib

import pytest

pytest.importorskip("mmdet")

from mmengine.config import Config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.py") if not p.name.startswith("_"))
OUT_CHANNELS = {
    "s0": [48, 64, 128, 320], "s1": [64, 80, 160, 416], "s2": [96, 128, 256, 640],
    "s3": [128, 160, 336, 848], "s4": [192, 256, 512, 1280], "s5": [256, 336, 672, 1696],
    "s6": [320, 416, 848, 2128],
}


def _rel(p):
    return str(p.relative_to(CONFIG_DIR))


def _load(path):
    return Config.fromfile(str(path))


def test_expected_configs_exist():
    names = {_rel(p) for p in CONFIGS}
    for det in ("faster_rcnn", "mask_rcnn"):
        for a in OUT_CHANNELS:
            assert f"{det}_revbifpn_{a}.py" in names
    assert {"retinanet_revbifpn_s3.py", "fcos_revbifpn_s3.py"} <= names  # one-stage detectors
    for p in CONFIGS:  # every config saves its checkpoints crash-safely
        assert _load(p).default_hooks.checkpoint.type == "SafeCheckpointHook", _rel(p)
    for q in ("faster_rcnn_revbifpn_s0_synthetic.py", "mask_rcnn_revbifpn_s0_synthetic.py",
              "fcn_revbifpn_s0_synthetic_seg.py"):
        assert f"quickstart/{q}" in names
    assert any(n.split("/")[-1].startswith("fcn_revbifpn_") and "ade20k" in n for n in names)


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_loads_and_builds(path, mm_build):
    cfg = _load(path)
    assert cfg.custom_imports == dict(imports=["revbifpn_mm"], allow_failed_imports=False)
    scope = cfg.default_scope
    assert scope in ("mmdet", "mmseg")
    backbone = cfg.model.backbone
    assert backbone.type == "RevBiFPN"
    arch = backbone.arch
    # The data preprocessor pads to the backbone's size divisibility (32).
    dp = cfg.model.data_preprocessor
    if scope == "mmdet":
        assert dp.pad_size_divisor == 32
        assert cfg.model.neck.type == "RevBiFPNNeck"
        assert list(cfg.model.neck.in_channels) == OUT_CHANNELS[arch]
    else:
        assert dp.test_cfg.size_divisor == 32
        assert list(cfg.model.decode_head.in_channels) == OUT_CHANNELS[arch]
    if "quickstart" not in str(path):
        # the official weights, by URL (downloaded once, SHA-256 checked: test_pretrained_url.py)
        from revbifpn_mm.models.pretrained import OFFICIAL_WEIGHTS
        assert dict(backbone.init_cfg) == dict(type="Pretrained", checkpoint=OFFICIAL_WEIGHTS[arch].url)

    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # no checkpoint needed to build
    model = mm_build(model_cfg, scope)
    assert tuple(model.backbone.out_channels) == tuple(OUT_CHANNELS[arch])
    if "quickstart" not in str(path):  # no stochastic depth in fine-tuning (see test_drop_path_rate_...)
        probs = [m.drop_prob for m in model.backbone.modules() if hasattr(m, "drop_prob")]
        assert probs and max(probs) == 0.0
    if scope == "mmdet":
        assert model.neck.in_channels == list(model.backbone.out_channels)
        if "quickstart" not in str(path):
            assert model.backbone.norm_eval is True  # mmdet HRNet's default, the paper's setting
    else:
        # resize_concat: the head sees the concatenation of the four backbone outputs
        assert model.decode_head.in_channels == sum(model.backbone.out_channels)
        assert list(model_cfg.decode_head.in_channels) == list(model.backbone.out_channels)


@pytest.mark.parametrize("det", ["faster_rcnn", "mask_rcnn"])
@pytest.mark.parametrize("arch", [a for a in OUT_CHANNELS if a != "s4"])
def test_arch_configs_only_change_arch_neck_and_checkpoint(det, arch):
    parent = _load(CONFIG_DIR / f"{det}_revbifpn_s4.py").to_dict()
    child = _load(CONFIG_DIR / f"{det}_revbifpn_{arch}.py").to_dict()
    assert child["model"]["backbone"]["arch"] == arch
    for d in (parent, child):
        d["model"]["backbone"].pop("arch")
        d["model"]["backbone"].pop("init_cfg")
        d["model"]["neck"].pop("in_channels")
    assert child == parent


@pytest.mark.parametrize("det", ["faster_rcnn", "mask_rcnn"])
def test_coco_configs_follow_the_1x_schedule(det):
    cfg = _load(CONFIG_DIR / f"{det}_revbifpn_s4.py")
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ("SGD", 0.02, 0.9, 0.0001)
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.dataset.data_root == "data/coco/"
    assert cfg.train_dataloader.dataset.ann_file == "annotations/instances_train2017.json"
    assert cfg.val_evaluator.ann_file == "data/coco/annotations/instances_val2017.json"
    assert cfg.model.backbone.arch == "s4"
    assert cfg.model.backbone.out_type == "neck"
    assert cfg.model.neck.in_channels == [192, 256, 512, 1280]


def test_quickstart_configs_use_the_synthetic_data_and_coco_metric():
    for name, metric in (("faster_rcnn_revbifpn_s0_synthetic.py", "bbox"),
                         ("mask_rcnn_revbifpn_s0_synthetic.py", ["bbox", "segm"])):
        cfg = _load(CONFIG_DIR / "quickstart" / name)
        assert cfg.train_dataloader.dataset.data_root.rstrip("/") == "data/synthetic_coco"
        assert cfg.val_evaluator.type == "CocoMetric"
        assert cfg.val_evaluator.metric == metric
        assert cfg.model.backbone.init_cfg is None
        assert cfg.model.roi_head.bbox_head.num_classes == 3
    seg = _load(CONFIG_DIR / "quickstart" / "fcn_revbifpn_s0_synthetic_seg.py")
    assert seg.train_dataloader.dataset.data_root.rstrip("/") == "data/synthetic_coco"
    assert seg.model.decode_head.num_classes == 4


def test_cli_helpers_fast(tmp_path, monkeypatch):
    """check_data / check_built_datasets on a config without files: clear DataError, no traceback needed."""
    from preflight import DataError, check_built_datasets, check_data

    cfg = _load(CONFIG_DIR / "faster_rcnn_revbifpn_s0.py")
    monkeypatch.chdir(tmp_path)  # no data/coco here
    with pytest.raises(DataError) as err:
        check_data(cfg, ("train", "val"))
    msg = str(err.value)
    assert "data/coco" in msg and "train2017" in msg and "data_root" in msg
    assert "quickstart" in msg

    class _Loop:
        class dataloader:
            dataset = []

    class _Runner:
        cfg = Config(dict(train_dataloader=dict(dataset=dict(filter_cfg=dict(filter_empty_gt=True)))))
        _train_loop = train_loop = _Loop()

    with pytest.raises(DataError, match="empty"):
        check_built_datasets(_Runner(), ("train",))


FINETUNE_CONFIGS = [p for p in CONFIGS if "quickstart" not in str(p)]


@pytest.mark.parametrize("path", FINETUNE_CONFIGS, ids=_rel)
def test_drop_path_rate_is_written_in_every_finetuning_config(path):
    """drop_path_rate=0.0 in each file, with its reason, instead of the ImageNet rate (S6: 0.3).

    The paper fine-tuned with mmdet's HRNetV2p configs (backbone swapped), which have
    no stochastic depth, as mmseg's HRNet configs; users can raise it with
    --cfg-options model.backbone.drop_path_rate=...
    """
    import re
    assert re.search(r"drop_path_rate=0\.0,\s*#\s*\S", path.read_text()), \
        f"{_rel(path)} must state drop_path_rate=0.0 and why"
    assert _load(path).model.backbone.drop_path_rate == 0.0


def _mmdet_base(tmp_path, rel):
    """mmdet's config merged through ``mmdet::`` inheritance, as our configs see it."""
    cfg = tmp_path / "mmdet_base.py"
    cfg.write_text(f"_base_ = 'mmdet::{rel}'\n")
    return Config.fromfile(str(cfg)).to_dict()


@pytest.mark.parametrize("det,base", [("faster_rcnn", "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"),
                                      ("mask_rcnn", "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")])
def test_s4_configs_are_mmdet_base_with_backbone_and_neck_swapped(det, base, tmp_path):
    """The merged S4 config equals mmdet's except model.backbone, model.neck and custom_imports,
    and the file itself says nothing else (data, evaluators, schedule, pad_size_divisor=32
    all come from the base)."""
    import ast
    path = CONFIG_DIR / f"{det}_revbifpn_s4.py"
    ours = _load(path).to_dict()
    theirs = _mmdet_base(tmp_path, base)
    assert ours["model"]["data_preprocessor"]["pad_size_divisor"] == 32  # RevBiFPN needs multiples of 32
    assert ours.pop("custom_imports") == dict(imports=["revbifpn_mm"], allow_failed_imports=False)
    assert (ours["default_hooks"]["checkpoint"].pop("type"), theirs["default_hooks"]["checkpoint"].pop("type")) == (
        "SafeCheckpointHook", "CheckpointHook")  # crash-safe saves; interval and the rest are mmdet's
    for d in (ours, theirs):
        del d["model"]["backbone"], d["model"]["neck"]
    assert ours == theirs

    tree = ast.parse(path.read_text())
    names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    assert sorted(names) == ["_base_", "custom_imports", "default_hooks", "model"]
    model = next(node.value for node in tree.body if isinstance(node, ast.Assign) and node.targets[0].id == "model")
    assert sorted(k.arg for k in model.keywords) == ["backbone", "neck"]


DETECTOR_CONFIGS = [p for p in CONFIGS if _load(p).get("default_scope") == "mmdet"]


def _stride_mismatches(model_cfg, mm_build, size=256):
    """Where a detector's heads expect feature strides that its neck does not produce: the neck's
    output strides are read off a forward (on the meta device: shapes only), the heads' from their
    anchor / point generators and RoI extractors."""
    import torch
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.backbone.init_cfg = None
    with torch.device("meta"):
        model = mm_build(model_cfg, "mmdet").eval()
        outs = model.neck(model.backbone(torch.empty(1, 3, size, size)))
    neck = [size // o.shape[-1] for o in outs]
    heads = {}
    for name in ("rpn_head", "bbox_head"):
        head = getattr(model, name, None)
        if head is not None and hasattr(head, "prior_generator"):
            heads[name] = [s[0] if isinstance(s, (tuple, list)) else s for s in head.prior_generator.strides]
    roi = getattr(getattr(model, "roi_head", None), "bbox_roi_extractor", None)
    if roi is not None:
        heads["roi_head"] = list(roi.featmap_strides)
    assert heads, "no head with feature strides found"
    return {k: (v, neck[:len(v)]) for k, v in heads.items() if v != neck[:len(v)]}


@pytest.mark.parametrize("path", DETECTOR_CONFIGS, ids=_rel)
def test_heads_predict_on_the_strides_the_neck_produces(path, mm_build):
    assert _stride_mismatches(_load(path).model, mm_build) == {}


def test_the_stride_check_sees_a_one_stage_head_on_the_wrong_strides(mm_build):
    """RevBiFPNNeck dropped into mmdet's RetinaNet without stride=2 gives strides 4-64 against anchors
    for 8-128: training would run, silently wrong. The check above must catch it."""
    cfg = _load(CONFIG_DIR / "retinanet_revbifpn_s3.py")
    cfg.model.neck.stride = 1
    assert _stride_mismatches(cfg.model, mm_build) == {"bbox_head": ([8, 16, 32, 64, 128], [4, 8, 16, 32, 64])}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_revbifpn_s3.py", "fcos_revbifpn_s3.py"])
def test_one_stage_detectors_train_a_step_on_the_embedded_data(name, synthetic_coco, tmp_path):
    """The one-stage configs, with the data pointed at the generated dataset (3 classes), train one
    iteration through tools/train.py: a finite loss, a checkpoint."""
    import json
    import subprocess
    import sys
    root = synthetic_coco(4, 2, (128, 128), seed=4)
    head = "bbox_head"
    opts = {f"{k}_dataloader.dataset.data_root": root for k in ("train", "val", "test")}
    opts.update({f"{k}_dataloader.dataset.{f}": v for k in ("train", "val", "test")
                 for f, v in (("ann_file", "annotations/instances_train.json" if k == "train" else
                               "annotations/instances_val.json"),
                              ("data_prefix.img", "train/" if k == "train" else "val/"))})
    opts.update({f"{k}_dataloader.dataset.metainfo.classes": "('circle','square','triangle')"
                 for k in ("train", "val", "test")})
    opts.update({
                 f"model.{head}.num_classes": 3, "model.backbone.init_cfg": None, "train_dataloader.batch_size": 2,
                 "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
                 "train_cfg.max_epochs": 1, "train_cfg.val_interval": 10, "default_hooks.logger.interval": 1,
                 "train_dataloader.dataset.filter_cfg.min_size": 0,
                 "val_evaluator.ann_file": root + "annotations/instances_val.json",
                 "test_evaluator.ann_file": root + "annotations/instances_val.json"})
    args = [f"{k}={v}" for k, v in opts.items()]
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), str(CONFIG_DIR / name), "--work-dir",
                          str(tmp_path), "--cfg-options", *args], capture_output=True, text=True, timeout=900,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    scalars = next(tmp_path.glob("*/vis_data/scalars.json")).read_text().splitlines()
    first = json.loads(scalars[0])
    assert first["loss"] == first["loss"] and first["loss"] > 0, first  # finite, positive
    assert (tmp_path / "epoch_1.pth").is_file()
