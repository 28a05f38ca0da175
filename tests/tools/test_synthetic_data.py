"""Tests for the embedded synthetic shapes dataset generator."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic_data as synthetic
from synthetic_data import CLASSES, generate_synthetic_coco

SMALL = dict(num_train=6, num_val=3, image_size=(96, 128), seed=3)


def _tree_bytes(root: Path) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != synthetic.MARKER_NAME
    }


def _polygon_mask(polygon, height, width) -> np.ndarray:
    """Independent reference raster: pixels whose centre lies inside the polygon."""
    mpath = pytest.importorskip("matplotlib.path")
    yy, xx = np.mgrid[0:height, 0:width]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    path = mpath.Path(np.asarray(polygon, dtype=float).reshape(-1, 2))
    return path.contains_points(centres).reshape(height, width)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "coco"
    return generate_synthetic_coco(root, **SMALL)


def _load(info, split):
    with open(info[f"{split}_ann_file"], encoding="utf-8") as f:
        return json.load(f)


def test_layout_and_counts(dataset):
    root = Path(dataset["root"])
    assert dataset["cached"] is False
    assert dataset["num_images"] == {"train": 6, "val": 3}
    assert (root / synthetic.MARKER_NAME).is_file()
    for split, n in (("train", 6), ("val", 3)):
        coco = _load(dataset, split)
        assert len(coco["images"]) == n
        assert len(coco["annotations"]) == dataset["num_annotations"][split]
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
        assert [c["name"] for c in coco["categories"]] == list(CLASSES)
        for img in coco["images"]:
            stem = Path(img["file_name"]).stem
            assert (Path(dataset[f"{split}_img_dir"]) / img["file_name"]).is_file()
            assert (Path(dataset["seg_img_dirs"][split]) / img["file_name"]).is_file()
            assert (Path(dataset["seg_ann_dirs"][split]) / f"{stem}.png").is_file()
    # Nothing left behind next to root.
    assert sorted(p.name for p in root.parent.iterdir()) == ["coco"]


def test_determinism(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", **SMALL)
    b = generate_synthetic_coco(tmp_path / "b", **SMALL)
    ta, tb = _tree_bytes(Path(a["root"])), _tree_bytes(Path(b["root"]))
    assert ta.keys() == tb.keys()
    assert any(k.endswith(".jpg") for k in ta) and any(k.endswith(".json") for k in ta)
    for key in ta:
        assert ta[key] == tb[key], key
    c = generate_synthetic_coco(tmp_path / "c", **dict(SMALL, seed=4))
    tc = _tree_bytes(Path(c["root"]))
    assert tc["annotations/instances_train.json"] != ta["annotations/instances_train.json"]
    assert tc["train/000001.jpg"] != ta["train/000001.jpg"]


def test_image_does_not_depend_on_counts(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", **SMALL)
    b = generate_synthetic_coco(tmp_path / "b", **dict(SMALL, num_train=2))
    assert (Path(a["train_img_dir"]) / "000002.jpg").read_bytes() == (
        Path(b["train_img_dir"]) / "000002.jpg"
    ).read_bytes()


def test_idempotent(tmp_path):
    root = tmp_path / "coco"
    first = generate_synthetic_coco(root, **SMALL)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    second = generate_synthetic_coco(root, **SMALL)
    assert second["cached"] is True
    assert second["num_annotations"] == first["num_annotations"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamp

    again = generate_synthetic_coco(root, overwrite=True, **SMALL)
    assert again["cached"] is False
    changed = generate_synthetic_coco(root, **dict(SMALL, num_val=1))
    assert changed["cached"] is False and changed["num_images"]["val"] == 1
    assert len(list((root / "val").glob("*.jpg"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


def test_refuses_foreign_directory(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate_synthetic_coco(root, **SMALL)
    assert (root / "keep.txt").read_text() == "user data"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_synthetic_coco(empty, **SMALL)["num_images"]["train"] == 6


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_synthetic_coco(tmp_path / "x", num_train=-1)
    with pytest.raises(ValueError):
        generate_synthetic_coco(tmp_path / "x", image_size=(8, 8))


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotation_sanity(dataset, split):
    coco = _load(dataset, split)
    images = {img["id"]: img for img in coco["images"]}
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    per_image = {i: [] for i in images}
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        h, w = img["height"], img["width"]
        assert (h, w) == (96, 128)
        assert ann["category_id"] in (1, 2, 3)
        assert ann["iscrowd"] == 0
        x, y, bw, bh = ann["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        assert bw > 0 and bh > 0
        assert 0 < ann["area"] <= bw * bh + 1e-6
        assert isinstance(ann["segmentation"], list) and len(ann["segmentation"]) == 1
        poly = np.asarray(ann["segmentation"][0], dtype=float).reshape(-1, 2)
        assert len(poly) >= 3
        if ann["category_id"] == 1:
            assert len(poly) == 24
        np.testing.assert_allclose(poly.min(axis=0), [x, y], atol=0.02)
        np.testing.assert_allclose(poly.max(axis=0), [x + bw, y + bh], atol=0.02)
        per_image[ann["image_id"]].append(ann)
    assert all(1 <= len(anns) <= 4 for anns in per_image.values())

    for image_id, anns in per_image.items():
        img = images[image_id]
        pil = Image.open(Path(dataset[f"{split}_img_dir"]) / img["file_name"])
        assert pil.size == (img["width"], img["height"]) and pil.mode == "RGB"
        label = np.asarray(Image.open(Path(dataset["seg_ann_dirs"][split]) / (Path(img["file_name"]).stem + ".png")))
        assert label.dtype == np.uint8 and label.shape == (img["height"], img["width"])
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
        assert set(np.unique(label).tolist()) - {0} == {a["category_id"] for a in anns}
        covered = np.zeros_like(label, dtype=bool)
        for ann in anns:
            mask = _polygon_mask(ann["segmentation"][0], img["height"], img["width"])
            assert mask.any()
            # The label map is the polygon raster: every polygon pixel carries its class
            # (a pixel centre exactly on an edge may go either way).
            agree = np.mean(label[mask] == ann["category_id"])
            assert agree > 0.98
            assert abs(mask.sum() - ann["area"]) <= 0.1 * ann["area"] + 5
            covered |= mask
        outside = label[~covered]
        assert np.mean(outside == 0) > 0.995


def test_pycocotools_loads(dataset):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        coco = COCO(dataset[f"{split}_ann_file"])
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        assert len(coco.getImgIds()) == dataset["num_images"][split]
        for ann_id in coco.getAnnIds()[:8]:
            ann = coco.loadAnns(ann_id)[0]
            img = coco.loadImgs(ann["image_id"])[0]
            mask = coco.annToMask(ann).astype(bool)
            label = np.asarray(
                Image.open(Path(dataset["seg_ann_dirs"][split]) / (Path(img["file_name"]).stem + ".png"))
            )
            ours = (label == ann["category_id"]) & _bbox_region(ann["bbox"], label.shape)
            iou = np.logical_and(mask, ours).sum() / np.logical_or(mask, ours).sum()
            assert iou > 0.95
            assert abs(mask.sum() - ann["area"]) <= 0.1 * ann["area"] + 5


def _bbox_region(bbox, shape):
    x, y, w, h = bbox
    region = np.zeros(shape, dtype=bool)
    region[int(np.floor(y)) : int(np.ceil(y + h)) + 1, int(np.floor(x)) : int(np.ceil(x + w)) + 1] = True
    return region


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    args = ["--root", str(root), "--num-train", "2", "--num-val", "1", "--image-size", "64", "64"]
    assert synthetic.main(args) == 0
    out = capsys.readouterr().out
    assert "train: 2 images" in out and "generated" in out
    assert synthetic.main(args) == 0
    assert "up to date" in capsys.readouterr().out


def test_module_imports_no_heavy_dependencies():
    # Load the file directly (bypassing the package __init__) and check what it pulled in.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('syn_probe', {synthetic.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "heavy = [m for m in ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmseg', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_dense_dataset_has_the_instances_asked_for(tmp_path):
    info = generate_synthetic_coco(tmp_path / "dense", num_train=3, num_val=1, image_size=(128, 160), seed=1,
                                   instances=(30, 40))
    coco = _load(info, "train")
    per_image = {img["id"]: 0 for img in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] += 1
        x, y, bw, bh = ann["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= 160 and y + bh <= 128
    # objects shrink with the count so that nearly all of them find a free spot
    assert all(27 <= n <= 40 for n in per_image.values()), per_image
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == 1]
    for i, a in enumerate(boxes):  # placed without overlap, as in the default dataset
        for b in boxes[i + 1:]:
            assert not synthetic._boxes_intersect([a[0], a[1], a[0] + a[2], a[1] + a[3]],
                                                  [b[0], b[1], b[0] + b[2], b[1] + b[3]], margin=0.0)
    # another density is another dataset: the marker does not let one stand for the other
    again = generate_synthetic_coco(tmp_path / "dense", num_train=3, num_val=1, image_size=(128, 160), seed=1)
    assert again["cached"] is False and max(_count_per_image(_load(again, "train")).values()) <= 4
    with pytest.raises(ValueError, match="instances"):
        generate_synthetic_coco(tmp_path / "x", instances=(5, 2))


def _count_per_image(coco):
    out = {img["id"]: 0 for img in coco["images"]}
    for ann in coco["annotations"]:
        out[ann["image_id"]] += 1
    return out


def test_cli_dense(tmp_path, capsys):
    args = ["--root", str(tmp_path / "d"), "--num-train", "1", "--num-val", "1", "--image-size", "96", "96",
            "--instances", "20", "20"]
    assert synthetic.main(args) == 0
    with open(tmp_path / "d" / "annotations" / "instances_train.json", encoding="utf-8") as f:
        assert 18 <= len(json.load(f)["annotations"]) <= 20
