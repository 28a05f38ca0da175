"""The model zoo (docs/model_zoo.md) states what the configs build, measured.

Parameters: the detectors of ``configs/{faster,mask}_rcnn_revbifpn_s#.py`` are built on
the ``meta`` device (shapes only: no memory, no initialisation) and their parameters
counted exactly. The expected totals are the paper's arithmetic (spec 13.2): backbone
(trunk + output MBConvs, pinned in test_revbifpn.py) + HRFPN + mmdet's standard RPN,
Shared2FC box and FCN mask heads, which gives the paper's Mask R-CNN table to 0.1 M.

MACs: multiply-accumulates of every convolution and matrix product the model really
executes, counted at the dispatcher (a ``TorchDispatchMode`` on ``aten.convolution``,
``aten.mm``, ``aten.addmm``, ``aten.bmm``), so ``RevBiFPNNeck``'s direct ``F.conv2d``
calls with split weights are counted as well; a module forward hook on
``reduction_conv`` would not see them. A convolution costs
``output (input, if transposed) elements x weight.shape[1] x kernel area``, a matrix
product ``M x K x N``; biases, norms, activations, pooling and resizing are not counted
(the usual conv+linear convention). The forward runs on ``meta`` tensors, so 800x1344
costs no arithmetic at all. Protocol (mmdet's get_flops-style, the paper's): batch 1,
800x1344 input through backbone + neck + RPN head, plus the box head on 1000 RoIs
(7x7) and, for Mask R-CNN, the mask head on 100 RoIs (14x14).
"""
import copy
import pathlib
import re

import pytest
import torch

pytest.importorskip("mmdet")
from mmengine.config import Config  # noqa: E402

pytestmark = pytest.mark.mm

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARCHS = ("s0", "s1", "s2", "s3", "s4", "s5", "s6")
H, W, ROIS, MASK_ROIS = 800, 1344, 1000, 100

# test_revbifpn.py's SPEC_PARAMS: trunk + output MBConvs (the detection backbone)
BACKBONE_PARAMS = {"s0": 1_556_328, "s1": 2_439_724, "s2": 5_721_040, "s3": 12_167_150,
                   "s4": 34_454_352, "s5": 59_217_680, "s6": 108_706_586}
# mmdet's standard heads for 80 classes (spec 13.2) and HRFPN's 3x3 output convs
RPN, BOX_HEAD, MASK_HEAD, HRFPN_OUT_CONVS = 593_935, 14_306_705, 2_643_280, 5 * 590_080
# The paper's figures: Mask R-CNN params (M) and MACs (B); Faster R-CNN MACs (B).
PAPER_MASK_PARAMS = dict(zip(ARCHS, (22.2, 23.1, 26.5, 33.0, 55.5, 80.5, 130.2)))
PAPER_MASK_MACS = dict(zip(ARCHS, (188.2, 193.7, 210.5, 232.9, 304.1, 382.0, 518.5)))
PAPER_FASTER_MACS = {"s3": 180.99, "s5": 328.91, "s6": 465.43}


def _config(det, arch):
    return Config.fromfile(str(ROOT / "configs" / f"{det}_rcnn_revbifpn_{arch}.py"))


def _build_meta(model_cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    cfg = copy.deepcopy(model_cfg)
    if "backbone" in cfg:
        cfg.backbone.init_cfg = None
    # mmdet's scope explicitly: an earlier test may have left mmseg's as the default scope
    with torch.device("meta"), DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(cfg).eval()


def _count(counter_cls, fn, *args):
    with torch.no_grad(), counter_cls() as counter:
        out = fn(*args)
    return counter.macs, out


def _hrfpn(neck_cfg):
    """mmdet's HRFPN with the inputs and outputs of the config's RevBiFPNNeck (the paper's neck)."""
    assert neck_cfg.type == "RevBiFPNNeck" and neck_cfg.out_channels == 256 and neck_cfg.num_outs == 5
    return _build_meta(dict(type="HRFPN", in_channels=list(neck_cfg.in_channels), out_channels=256, num_outs=5))


def measure(arch, counter):
    """{det: (parameters, MACs with RevBiFPNNeck, MACs with mmdet's HRFPN)} of the shipped configs.

    The backbone's MACs are counted once per arch (the Faster and Mask R-CNN configs
    share the backbone config, checked); everything after it is counted per detector.
    """
    out, backbone = {}, None
    for det in ("faster", "mask"):
        cfg = _config(det, arch).model
        model = _build_meta(cfg)
        if backbone is None:
            backbone = (cfg.backbone, *_count(counter, model.backbone, torch.empty(1, 3, H, W, device="meta")))
        assert cfg.backbone == backbone[0]
        bb_macs, feats = backbone[1:]
        lean, outs = _count(counter, model.neck, feats)
        hrfpn, _ = _count(counter, _hrfpn(cfg.neck), feats)
        heads = _count(counter, model.rpn_head, outs)[0]
        heads += _count(counter, model.roi_head.bbox_head, torch.empty(ROIS, 256, 7, 7, device="meta"))[0]
        if det == "mask":
            heads += _count(counter, model.roi_head.mask_head, torch.empty(MASK_ROIS, 256, 14, 14, device="meta"))[0]
        params = sum(p.numel() for p in model.parameters())
        out[det] = (params, bb_macs + lean + heads, bb_macs + hrfpn + heads)
    return out


@pytest.fixture(scope="module")
def measured(mac_counter):
    return {(det, a): v for a in ARCHS for det, v in measure(a, mac_counter).items()}


def test_counter_sees_direct_conv_calls_and_linear_layers(mac_counter):
    """The counter counts F.conv2d calls that module hooks miss, and linear layers."""
    x, w = torch.empty(2, 8, 10, 12, device="meta"), torch.empty(16, 4, 3, 3, device="meta")
    lin = torch.nn.Linear(32, 5, device="meta")
    with mac_counter() as c:
        torch.nn.functional.conv2d(x, w, padding=1, groups=2)
        lin(torch.empty(7, 32, device="meta"))
        torch.nn.functional.conv_transpose2d(torch.empty(1, 6, 4, 4, device="meta"),
                                             torch.empty(6, 3, 2, 2, device="meta"), stride=2)
    assert c.macs == 2 * 16 * 10 * 12 * 4 * 9 + 7 * 32 * 5 + 16 * 6 * 3 * 4


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_are_the_papers(arch, measured):
    """Exact counts from the paper's arithmetic; the Mask R-CNN totals round to its table."""
    in_ch = list(_config("mask", arch).model.neck.in_channels)
    hrfpn = 256 * sum(in_ch) + 256 + HRFPN_OUT_CONVS
    faster = BACKBONE_PARAMS[arch] + hrfpn + RPN + BOX_HEAD
    assert measured["faster", arch][0] == faster
    assert measured["mask", arch][0] == faster + MASK_HEAD
    assert round(measured["mask", arch][0] / 1e6, 1) == PAPER_MASK_PARAMS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_macs_reproduce_the_paper_with_hrfpn(arch, measured):
    """HRFPN as in the paper: within 1 % of its figures (it counted at about 800x1333)."""
    assert measured["mask", arch][2] / 1e9 == pytest.approx(PAPER_MASK_MACS[arch], rel=0.01)
    if arch in PAPER_FASTER_MACS:
        assert measured["faster", arch][2] / 1e9 == pytest.approx(PAPER_FASTER_MACS[arch], rel=0.01)


@pytest.mark.parametrize("det", ["faster", "mask"])
@pytest.mark.parametrize("arch", ARCHS)
def test_lean_neck_saves_exactly_the_stride4_reduction(det, arch, measured):
    """RevBiFPNNeck applies HRFPN's 1x1 reduction at each level's resolution (level i has
    1/4**i of the stride-4 pixels): it saves 256 * C_i * (1 - 4**-i) MACs per stride-4
    pixel and level, and nothing else changes."""
    in_ch = list(_config(det, arch).model.neck.in_channels)
    pixels = (H // 4) * (W // 4)
    saved = sum(256 * c * (pixels - pixels // 4 ** i) for i, c in enumerate(in_ch))
    _, lean, hrfpn = measured[det, arch]
    assert hrfpn - lean == saved


def _doc_rows():
    text = (ROOT / "docs" / "model_zoo.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*(Faster|Mask) R-CNN\s*\|\s*RevBiFPN-(S\d)\s*\|(.*)\|\s*$", line)
        if m:
            cells = [c.strip() for c in m.group(3).split("|")]
            rows[m.group(1).lower(), m.group(2).lower()] = cells
    return text, rows


def test_model_zoo_doc_states_the_measured_figures(measured):
    """docs/model_zoo.md: params (M, 2 decimals) and GMACs (1 decimal) as measured here,
    and the official URL and SHA-256 of each checkpoint."""
    from revbifpn_mm.models.pretrained import OFFICIAL_WEIGHTS
    text, rows = _doc_rows()
    assert len(rows) == 14
    for (det, arch), (params, lean, hrfpn) in measured.items():
        cells = rows[det, arch]
        assert cells[:3] == [f"{params / 1e6:.2f}M", f"{lean / 1e9:.1f}", f"{hrfpn / 1e9:.1f}"], (det, arch, cells)
    for arch, entry in OFFICIAL_WEIGHTS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| RevBiFPN-{arch.upper()} |"))
        assert entry.url in row and entry.sha256 in row and f"{entry.top1:.1f}%" in row
