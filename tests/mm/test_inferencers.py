"""mmdet's DetInferencer and mmseg's MMSegInferencer work with checkpoints the quickstart trained.

A very short quickstart run (2 iterations of Faster R-CNN and of the FCN segmentor on a tiny
synthetic dataset) also checks the demo's segmentation option and its prediction pictures:
the summary reports mIoU next to bbox mAP, and each model's pictures exist. Then each
inferencer is built from the quickstart config and the trained checkpoint (loaded through
mmengine's ``torch.load``, which needs the package's allow-list on torch >= 2.6), holds exactly
the checkpoint's weights, and predicts on one embedded validation image.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

ROOT = Path(__file__).resolve().parents[2]
QS_DET = str(ROOT / "configs" / "quickstart" / "faster_rcnn_revbifpn_s0_synthetic.py")
QS_SEG = str(ROOT / "configs" / "quickstart" / "fcn_revbifpn_s0_synthetic_seg.py")
pytestmark = [pytest.mark.mm, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inferencers")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(ROOT / "tools" / "quickstart.py"), "--tasks", "faster,seg", "--iters", "2",
           "--num-train", "4", "--num-val", "2", "--num-pictures", "2", "--threads", "1",
           "--work-dir", str(tmp / "work"), "--data-root", str(tmp / "synthetic_coco")]
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    summary = json.loads((tmp / "work" / "summary.json").read_text())
    return tmp, summary, out


def test_demo_segmentation_option_reports_miou_and_draws_pictures(demo):
    _, summary, out = demo
    assert set(summary) >= {"faster", "seg"} and "mask" not in summary
    assert 0.0 <= summary["seg"]["metrics"]["mIoU"] <= 100.0
    assert "mIoU" in out.split("RevBiFPN quickstart summary")[1]
    for name in ("faster", "seg"):
        pictures = summary[name]["pictures"]
        assert len(pictures) == 2, summary[name]
        for path in pictures:
            assert Path(path).is_file() and Path(path).stat().st_size > 0
            assert "predictions" in Path(path).parts and "vis" in Path(path).parts  # the visualization hook's
            assert f"predictions drawn: {path}" in out


def _one_image(tmp):
    return str(sorted((tmp / "synthetic_coco" / "val").glob("*.jpg"))[0])


def _same_weights(model, ckpt_path):
    import torch

    state = torch.load(ckpt_path, map_location="cpu")["state_dict"]
    own = model.state_dict()
    assert set(state) == set(own)
    for key, val in state.items():
        assert torch.equal(own[key].cpu(), val), key


def test_det_inferencer_with_demo_checkpoint(demo):
    from mmdet.apis import DetInferencer

    tmp, summary, _ = demo
    ckpt = summary["faster"]["checkpoint"]
    inferencer = DetInferencer(model=QS_DET, weights=ckpt, device="cpu", show_progress=False)
    _same_weights(inferencer.model, ckpt)
    assert inferencer.model.dataset_meta["classes"] == ("circle", "square", "triangle")
    result = inferencer(_one_image(tmp), pred_score_thr=0.0, return_datasamples=False)
    (pred,) = result["predictions"]
    assert {"bboxes", "labels", "scores"} <= set(pred)
    assert len(pred["bboxes"]) == len(pred["labels"]) == len(pred["scores"])


def test_mmseg_inferencer_with_demo_checkpoint(demo):
    import numpy as np
    from mmseg.apis import MMSegInferencer

    tmp, summary, _ = demo
    ckpt = summary["seg"]["checkpoint"]
    inferencer = MMSegInferencer(model=QS_SEG, weights=ckpt, device="cpu")
    _same_weights(inferencer.model, ckpt)
    image = _one_image(tmp)
    result = inferencer(image)
    pred = np.asarray(result["predictions"] if isinstance(result, dict) else result)
    from PIL import Image

    with Image.open(image) as im:
        assert pred.shape == (im.height, im.width)
    assert pred.min() >= 0 and pred.max() < 4  # background + 3 shape classes
