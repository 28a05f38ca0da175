"""tools/dataset_stats.py: instances per image of a config's training annotations, through dataset wrappers."""
import json
from pathlib import Path

import pytest

pytest.importorskip("mmdet")

import dataset_stats  # noqa: E402
import planner  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QS_MASK = str(ROOT / "configs" / "quickstart" / "mask_rcnn_revbifpn_s0_synthetic.py")
pytestmark = pytest.mark.mm


def _coco(path, per_image, crowd=0, size=(60, 80)):
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "height": size[0], "width": size[1]}
              for i in range(len(per_image))]
    anns = []
    for img, n in zip(images, per_image):
        for k in range(n + crowd):
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": 1, "bbox": [1, 1, 5, 5],
                         "area": 25, "iscrowd": int(k >= n), "segmentation": [[1, 1, 6, 1, 6, 6]]})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return str(path)


def _cfg(dataset):
    cfg = planner.load_config(QS_MASK)
    cfg.train_dataloader.dataset = dataset
    return cfg


def _leaf(tmp_path, name, per_image, **kw):
    _coco(tmp_path / name, per_image, **kw)
    return dict(type="CocoDataset", data_root=str(tmp_path), ann_file=name, filter_cfg=dict(filter_empty_gt=True),
                pipeline=planner.load_config(QS_MASK).train_pipeline)


def test_percentiles_through_wrappers_and_crowd_left_out(tmp_path):
    counts_a = list(range(1, 21))  # 1..20
    counts_b = [0, 100]  # the empty image is filtered out (filter_empty_gt)
    a = _leaf(tmp_path, "a.json", counts_a, crowd=3)  # crowd regions are ignored, not instances
    b = _leaf(tmp_path, "b.json", counts_b)
    ds = dict(type="RepeatDataset", times=2, dataset=dict(type="ConcatDataset", datasets=[
        dict(type="ClassBalancedDataset", oversample_thr=0.1, dataset=a), b]))
    stats, why = dataset_stats.read_dataset_stats(_cfg(ds))
    assert stats is not None, why
    assert stats.images == 21
    # nearest rank over 1..20 and 100: p50 -> 11th value, p95 -> 20th (ceil(0.95 * 21) = 20)
    assert (stats.instances_p50, stats.instances_p95, stats.instances_max) == (11, 20, 100)
    assert stats.masks and stats.mask_format == "bitmap"
    assert stats.largest_image == (60, 80)
    assert stats.shape == (256, 256)  # the quickstart pipeline's Resize (256, 256) keep_ratio, /32
    assert "p95 20 / max 100" in stats.describe()


def test_no_masks_when_the_pipeline_does_not_load_them(tmp_path):
    leaf = _leaf(tmp_path, "a.json", [3, 4])
    leaf["pipeline"] = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
                        dict(type="Resize", scale=(1333, 800), keep_ratio=True)]
    stats, _ = dataset_stats.read_dataset_stats(_cfg(leaf))
    assert not stats.masks and stats.instances_max == 4
    assert stats.shape == (800, 1344)


def test_absent_or_foreign_annotations_say_why(tmp_path):
    leaf = _leaf(tmp_path, "a.json", [1])
    leaf["ann_file"] = "missing.json"
    stats, why = dataset_stats.read_dataset_stats(_cfg(leaf))
    assert stats is None and "missing.json not found" in why
    (tmp_path / "list.json").write_text("[1, 2]")
    leaf["ann_file"] = "list.json"
    stats, why = dataset_stats.read_dataset_stats(_cfg(leaf))
    assert stats is None and "not a COCO annotation file" in why


def test_reads_the_generated_dense_dataset(tmp_path):
    from synthetic_data import generate_synthetic_coco

    info = generate_synthetic_coco(tmp_path / "d", num_train=3, num_val=1, image_size=(96, 128), instances=(15, 25))
    leaf = _leaf(tmp_path, "unused.json", [1])
    leaf.update(data_root=info["root"], ann_file="annotations/instances_train.json")
    stats, why = dataset_stats.read_dataset_stats(_cfg(leaf))
    counts = json.load(open(info["train_ann_file"]))["annotations"]
    per = {}
    for a in counts:
        per[a["image_id"]] = per.get(a["image_id"], 0) + 1
    assert stats.instances_max == max(per.values()) and stats.images == 3 and stats.masks


def test_box_sides_relative_to_their_image_and_drawn_by_the_planner(tmp_path):
    """The boxes' sides as fractions of their own image's; the planner's synthetic boxes take them
    (scaled to its input, at least 1 pixel) instead of its default 2-20 % of each side."""
    a = _leaf(tmp_path, "a.json", [2, 3])  # 5x5 boxes in 60x80 images
    _coco(tmp_path / "b.json", [1], size=(10, 10))  # a 5x5 box in a 10x10 image
    b = dict(a, ann_file="b.json")
    stats, why = dataset_stats.read_dataset_stats(_cfg(dict(type="ConcatDataset", datasets=[a, b])))
    assert stats is not None, why
    assert stats.box_sides == [(0.0625, 0.08333)] * 5 + [(0.5, 0.5)]  # ordered by area
    assert "median box 16x21 px after the pipeline" in stats.describe()  # the 4th of 6, at 256x256
    assert dataset_stats.box_side_sample([(0.01 * k, 0.1) for k in range(1, 101)], 4) == \
        [(0.13, 0.1), (0.38, 0.1), (0.63, 0.1), (0.88, 0.1)]
    from planner.inputs import _det_inputs

    boxes = _det_inputs(1, (100, 200), 50, 3, None, "cpu", [(0.25, 0.5), (0.001, 0.001)])
    boxes = boxes["data_samples"][0].gt_instances.bboxes
    sides = {(round(float(x1 - x0), 3), round(float(y1 - y0), 3)) for x0, y0, x1, y1 in boxes}
    assert sides == {(50.0, 50.0), (1.0, 1.0)}
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 200 and boxes[:, 3].max() <= 100
