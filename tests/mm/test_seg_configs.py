"""The mmseg configs (configs/mmseg/): mmseg's HRNet FCN family with RevBiFPN S0-S6 and LeanFCNHead.

Each S4 file is mmseg's ``fcn_hr18`` config of the same name with the backbone swapped and
the lean head; every other size inherits the S4 file and changes only the arch, the
head's channels and the ImageNet weights. Nothing is downloaded here.
"""
import ast
import copy
import pathlib
import re

import pytest

pytest.importorskip("mmseg")
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from revbifpn_mm.models.pretrained import OFFICIAL_WEIGHTS  # noqa: E402

pytestmark = [pytest.mark.mm]
ROOT = pathlib.Path(__file__).resolve().parents[2]
SEG_DIR = ROOT / "configs" / "mmseg"
OUT_CHANNELS = {
    "s0": [48, 64, 128, 320], "s1": [64, 80, 160, 416], "s2": [96, 128, 256, 640],
    "s3": [128, 160, 336, 848], "s4": [192, 256, 512, 1280], "s5": [256, 336, 672, 1696],
    "s6": [320, 416, 848, 2128],
}
# file-name suffix -> (mmseg HRNet config it mirrors, crop, iterations, images per GPU, classes, test scale)
FAMILIES = {
    "4xb2-40k_cityscapes-512x1024": ("fcn_hr18_4xb2-40k_cityscapes-512x1024.py", (512, 1024), 40000, 2, 19,
                                     (2048, 1024)),
    "4xb2-80k_cityscapes-512x1024": ("fcn_hr18_4xb2-80k_cityscapes-512x1024.py", (512, 1024), 80000, 2, 19,
                                     (2048, 1024)),
    "4xb4-80k_ade20k-512x512": ("fcn_hr18_4xb4-80k_ade20k-512x512.py", (512, 512), 80000, 4, 150, (2048, 512)),
    "4xb4-160k_ade20k-512x512": ("fcn_hr18_4xb4-160k_ade20k-512x512.py", (512, 512), 160000, 4, 150,
                                 (2048, 512)),
}
CASES = [(a, f) for f in FAMILIES for a in OUT_CHANNELS]


def _name(arch, family):
    return f"fcn_revbifpn_{arch}_{family}.py"


def _load(path):
    return Config.fromfile(str(path))


def _mmseg_config(tmp_path, rel):
    """mmseg's config merged through ``mmseg::`` inheritance, as our configs see it."""
    cfg = tmp_path / "mmseg_base.py"
    cfg.write_text(f"_base_ = 'mmseg::{rel}'\n")
    return Config.fromfile(str(cfg)).to_dict()


def test_exactly_the_family_exists():
    names = sorted(p.name for p in SEG_DIR.glob("*.py"))
    assert names == sorted(_name(a, f) for a, f in CASES)


@pytest.mark.parametrize("arch,family", CASES, ids=[_name(a, f)[:-3] for a, f in CASES])
def test_config_says_what_its_name_says(arch, family):
    _, crop, iters, per_gpu, classes, test_scale = FAMILIES[family]
    cfg = _load(SEG_DIR / _name(arch, family))
    assert cfg.default_scope == "mmseg"
    assert cfg.custom_imports == dict(imports=["revbifpn_mm"], allow_failed_imports=False)
    backbone, head, dp = cfg.model.backbone, cfg.model.decode_head, cfg.model.data_preprocessor
    assert backbone.type == "RevBiFPN" and backbone.arch == arch and backbone.out_type == "neck"
    assert dict(backbone.init_cfg) == dict(type="Pretrained", checkpoint=OFFICIAL_WEIGHTS[arch].url)
    assert backbone.drop_path_rate == 0.0
    assert backbone.norm_cfg.type == "SyncBN" and backbone.norm_eval is False  # as mmseg's HRNet
    assert head.type == "LeanFCNHead" and head.num_classes == classes
    assert list(head.in_channels) == OUT_CHANNELS[arch] and head.channels == sum(OUT_CHANNELS[arch])
    assert head.input_transform == "resize_concat" and tuple(head.in_index) == (0, 1, 2, 3)
    # crops, padding, schedule, batch, evaluation
    assert tuple(cfg.crop_size) == crop and tuple(dp.size) == crop
    assert dp.test_cfg.size_divisor == 32  # RevBiFPN's stride
    assert next(t for t in cfg.train_pipeline if t.type == "RandomCrop").crop_size == crop
    assert cfg.train_cfg.max_iters == iters and cfg.param_scheduler[0].end == iters
    assert cfg.train_dataloader.batch_size == per_gpu
    assert cfg.model.test_cfg.mode == "whole"
    assert next(t for t in cfg.test_pipeline if t.type == "Resize").scale == test_scale


@pytest.mark.parametrize("family", FAMILIES)
def test_s4_file_is_mmseg_hrnet_config_with_backbone_and_head_swapped(family, tmp_path):
    """Everything but the backbone, the head's type/channels, test-time padding and
    custom_imports is mmseg's HRNet config of the same name, and the file says nothing else."""
    path = SEG_DIR / _name("s4", family)
    ours = _load(path).to_dict()
    theirs = _mmseg_config(tmp_path, "hrnet/" + FAMILIES[family][0])
    assert ours.pop("custom_imports") == dict(imports=["revbifpn_mm"], allow_failed_imports=False)
    assert ours["model"]["data_preprocessor"].pop("test_cfg") == dict(size_divisor=32)
    assert (ours["default_hooks"]["checkpoint"].pop("type"), theirs["default_hooks"]["checkpoint"].pop("type")) == (
        "SafeCheckpointHook", "CheckpointHook")  # crash-safe saves; interval and the rest are mmseg's
    for d in (ours, theirs):
        del d["model"]["backbone"], d["model"]["pretrained"]
        for k in ("type", "in_channels", "channels"):
            del d["model"]["decode_head"][k]
    assert ours == theirs

    tree = ast.parse(path.read_text())
    names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    assert sorted(names) == ["_base_", "custom_imports", "default_hooks", "model"]


@pytest.mark.parametrize("arch,family", [c for c in CASES if c[0] != "s4"],
                         ids=[_name(a, f)[:-3] for a, f in CASES if a != "s4"])
def test_other_sizes_change_only_arch_channels_and_weights(arch, family):
    parent = _load(SEG_DIR / _name("s4", family)).to_dict()
    child = _load(SEG_DIR / _name(arch, family)).to_dict()
    for d in (parent, child):
        d["model"]["backbone"].pop("arch")
        d["model"]["backbone"].pop("init_cfg")
        d["model"]["decode_head"].pop("in_channels")
        d["model"]["decode_head"].pop("channels")
    assert child == parent
    assert re.search(r"drop_path_rate=0\.0,\s*#\s*\S", (SEG_DIR / _name(arch, family)).read_text())


def _build(cfg_model, mm_build):
    model_cfg = copy.deepcopy(cfg_model)
    model_cfg.backbone.init_cfg = None  # nothing downloaded
    return mm_build(model_cfg, "mmseg")


@pytest.mark.parametrize("arch", OUT_CHANNELS)
def test_builds_in_mmseg_scope(arch, mm_build):
    from revbifpn_mm.mm.decode_head import LeanFCNHead
    cfg = _load(SEG_DIR / _name(arch, "4xb2-40k_cityscapes-512x1024"))
    model = _build(cfg.model, mm_build)
    assert type(model).__name__ == "EncoderDecoder"
    assert list(model.backbone.out_channels) == OUT_CHANNELS[arch]
    assert type(model.decode_head) is LeanFCNHead
    assert model.decode_head.in_channels == sum(OUT_CHANNELS[arch])
    assert model.decode_head.convs[0].conv.weight.shape[:2] == (sum(OUT_CHANNELS[arch]),) * 2
    assert isinstance(model.decode_head.convs[0].bn, torch.nn.SyncBatchNorm)


def test_s0_segmentor_trains_one_step_and_predicts(mm_build):
    """The S0 Cityscapes segmentor: one SGD step at 64x128 on CPU, then whole-image inference."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    cfg = _load(SEG_DIR / _name("s0", "4xb2-40k_cityscapes-512x1024"))
    torch.manual_seed(0)
    model = _build(cfg.model, mm_build)
    model.init_weights()  # backbone init_cfg is None: random init, no download
    model.train()
    inputs = torch.randn(2, 3, 64, 128)
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 128), ori_shape=(64, 128), pad_shape=(64, 128)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, 64, 128)))
        samples.append(s)
    losses = model.loss(inputs, samples)
    loss = sum(v for k, v in losses.items() if "loss" in k)  # decode.loss_ce
    assert torch.isfinite(loss)
    loss.backward()
    head = model.decode_head
    for name, p in list(head.named_parameters()) + list(model.backbone.named_parameters())[:5]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert int(head.convs[0].bn.num_batches_tracked) == 1
    model.eval()
    with torch.no_grad():
        out = model.predict(inputs, samples)
    assert out[0].pred_sem_seg.data.shape == (1, 64, 128)


@pytest.mark.parametrize("family, expect, other", [("cityscapes", "leftImg8bit/{train,val}", "ADE20K"),
                                                   ("ade20k", "ADEChallengeData2016", "Cityscapes")])
def test_missing_dataset_message_names_the_right_dataset(family, expect, other, tmp_path, monkeypatch):
    from preflight import DataError, check_data

    name = next(p.name for p in (ROOT / "configs" / "mmseg").glob(f"fcn_revbifpn_s0_*_{family}-*.py"))
    cfg = Config.fromfile(str(ROOT / "configs" / "mmseg" / name))
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(DataError) as err:
        check_data(cfg, ["train"], scope="mmseg")
    assert expect in str(err.value) and other not in str(err.value), str(err.value)
