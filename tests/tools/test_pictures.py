"""The quickstart's prediction pictures (pictures).

An untrained model of each quickstart config (Faster R-CNN, Mask R-CNN, FCN) on two
validation images of a tiny synthetic dataset: one PNG per image, ground truth left and
prediction right, each half at the image's size, and the drawing differs from the bare image.
"""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

ROOT = Path(__file__).resolve().parents[2]
QS = ROOT / "configs" / "quickstart"
SIZE = (192, 256)  # height, width: not square, so a swapped size is caught
pytestmark = pytest.mark.mm


@pytest.fixture(scope="module")
def tiny_root(synthetic_coco):
    return synthetic_coco(2, 3, SIZE, seed=2)


def _model_and_dataset(config, root):
    import importlib

    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from revbifpn_mm.mm.compat import register_scope

    cfg = Config.fromfile(str(config))
    scope = register_scope(cfg)
    cfg.val_dataloader.dataset.data_root = str(root) + "/"
    if scope == "mmdet":  # an untrained head scores below the default 0.05: keep its boxes to draw them
        cfg.model.test_cfg.rcnn.score_thr = 0.0
    registry = importlib.import_module(f"{scope}.registry")
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.MODELS.build(cfg.model)
        model.init_weights()
        dataset = registry.DATASETS.build(cfg.val_dataloader.dataset)
    return model, dataset, scope


@pytest.mark.parametrize("name", ["faster_rcnn_revbifpn_s0_synthetic.py", "mask_rcnn_revbifpn_s0_synthetic.py",
                                  "fcn_revbifpn_s0_synthetic_seg.py"])
def test_pictures_are_written_at_the_image_size(name, tiny_root, tmp_path):
    import mmcv
    from PIL import Image

    from pictures import save_prediction_pictures

    model, dataset, scope = _model_and_dataset(QS / name, tiny_root)
    model.train()
    out = tmp_path / "predictions"
    paths = save_prediction_pictures(model, dataset, str(out), num=2, score_thr=0.0)
    assert model.training  # mode restored
    assert len(paths) == 2 and len(set(paths)) == 2
    h, w = SIZE
    for path in paths:
        assert Path(path).parent == out and path.endswith(".png") and Path(path).stat().st_size > 0
        with Image.open(path) as im:
            assert im.size == (2 * w, h), (path, im.size)  # ground truth | prediction
            drawn = np.asarray(im.convert("RGB"))
        src = Path(dataset[0]["data_samples"].img_path)
        original = mmcv.imread(str(src.parent / (Path(path).stem + src.suffix)), channel_order="rgb")
        # both halves carry drawings (boxes / masks / overlay) over the image: at least 1 % of the pixels
        for half in (drawn[:, :w], drawn[:, w:]):
            assert (half != original).any(axis=-1).mean() > 0.01


def test_bad_num_is_rejected(tiny_root, tmp_path):
    from pictures import save_prediction_pictures

    model, dataset, _ = _model_and_dataset(QS / "faster_rcnn_revbifpn_s0_synthetic.py", tiny_root)
    with pytest.raises(ValueError, match="num must be >= 1"):
        save_prediction_pictures(model, dataset, str(tmp_path), num=0)
