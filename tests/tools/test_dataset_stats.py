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
