"""What the training data of a detection config puts on the GPU: instances per image, their boxes, masks.

    python tools/dataset_stats.py CONFIG

Reads the COCO annotation files of the config's training dataset (through dataset wrappers) and counts
instances as mmdet's ``CocoDataset`` keeps them; the memory planner measures with the largest count and
boxes of the data's sizes (``plan_memory.instances_to_plan``, docs/planner.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from planner.config import PlanError, load_config, one_line, training_pipeline, training_shape
from preflight import data_path, dataset_cfgs

__all__ = ["DatasetStats", "read_dataset_stats", "coco_instance_counts", "percentile", "box_side_sample", "main"]

#: At most this many (width, height) pairs represent the data's box sizes in a plan.
BOX_SAMPLE = 64


@dataclass
class DatasetStats:
    """Instances per training image and what comes with them."""

    images: int
    """Training images counted (without images that ``filter_empty_gt`` drops)."""
    instances_p50: int
    instances_p95: int
    instances_max: int
    masks: bool
    """Whether the annotations carry segmentations and the pipeline loads them (``with_mask``)."""
    mask_format: str
    """``'bitmap'`` (``LoadAnnotations(poly2mask=True)``, mmdet's default) or ``'polygon'``."""
    largest_image: Tuple[int, int]
    """(height, width) of the largest image of the annotation files."""
    shape: Tuple[int, int]
    """(height, width) of one sample after the training pipeline."""
    shape_source: str
    box_sides: List[Tuple[float, float]] = field(default_factory=list)
    """Up to :data:`BOX_SAMPLE` (width, height) of the boxes as fractions of their image's (:func:`box_side_sample`)."""

    def describe(self) -> str:
        """One line: what was read."""
        masks = f"masks as {self.mask_format}s" if self.masks else "no masks"
        boxes = ""
        if self.box_sides:
            w, h = self.box_sides[len(self.box_sides) // 2]
            boxes = f", median box {w * self.shape[1]:.0f}x{h * self.shape[0]:.0f} px after the pipeline"
        return (f"{self.images} training images, instances per image p50 {self.instances_p50} / p95 "
                f"{self.instances_p95} / max {self.instances_max}{boxes}, {masks}; largest image "
                f"{self.largest_image[0]}x{self.largest_image[1]}, after the pipeline {self.shape[0]}x{self.shape[1]} "
                f"({self.shape_source})")


def percentile(values: Sequence[int], q: float) -> int:
    """The ``q``-th percentile (0-100) of ``values`` (not empty) by the nearest-rank method (an element of them)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return int(ordered[rank - 1])


def box_side_sample(sides: Sequence[Tuple[float, float]], n: int = BOX_SAMPLE) -> List[Tuple[float, float]]:
    """``n`` of ``sides`` (or all, if fewer), evenly spaced over them ordered by area: a small sample
    with the distribution of the boxes' sizes (element ``k`` is the ``(k + 0.5) / n`` quantile)."""
    ordered = sorted(sides, key=lambda wh: (wh[0] * wh[1], wh))
    if len(ordered) > n:
        ordered = [ordered[int((k + 0.5) * len(ordered) / n)] for k in range(n)]
    return [(round(w, 5), round(h, 5)) for w, h in ordered]


def _kept(ann: Dict[str, Any]) -> bool:
    """Whether mmdet's CocoDataset keeps the annotation as a ground-truth instance."""
    if ann.get("iscrowd", 0):
        return False  # an ignored region, not an instance
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    return ann.get("area", 1) > 0 and bbox[2] >= 1 and bbox[3] >= 1


def coco_instance_counts(path: str, filter_empty: bool = True
                         ) -> Tuple[List[int], bool, Tuple[int, int], List[Tuple[float, float]]]:
    """Instances per image of one COCO annotation file, and their boxes' sides.

    Args:
        path: the COCO json.
        filter_empty: leave out images without instances (``filter_cfg.filter_empty_gt``).

    Returns:
        ``(counts, masks, largest, sides)``: the instances of each image, whether any instance has a
        segmentation, the (height, width) of the largest image, and each instance's box (width,
        height) as fractions of its image's (where the image gives its size).

    Raises:
        ValueError, KeyError, TypeError: the file is not JSON, or not COCO instance annotations.
    """
    with open(path, encoding="utf-8") as f:
        coco = json.load(f)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("annotations"), list):
        raise ValueError("needs 'images' and 'annotations' lists")
    per_image = {img["id"]: 0 for img in coco["images"]}
    sizes = {img["id"]: (img.get("width") or 0, img.get("height") or 0) for img in coco["images"]}
    masks, sides = False, []
    for ann in coco["annotations"]:
        if _kept(ann) and ann.get("image_id") in per_image:
            per_image[ann["image_id"]] += 1
            masks = masks or bool(ann.get("segmentation"))
            iw, ih = sizes[ann["image_id"]]
            if iw > 0 and ih > 0:
                sides.append((min(1.0, ann["bbox"][2] / iw), min(1.0, ann["bbox"][3] / ih)))
    counts = [n for n in per_image.values() if n or not filter_empty]
    largest = max(((int(i.get("height", 0)), int(i.get("width", 0))) for i in coco["images"]),
                  key=lambda hw: hw[0] * hw[1], default=(0, 0))
    return counts, masks, largest, sides


def _mask_loading(cfg: Any) -> Tuple[bool, str]:
    """Whether the training pipeline loads masks, and as bitmaps or polygons."""
    for t in training_pipeline(cfg):
        if t.get("type") == "LoadAnnotations":
            return bool(t.get("with_mask", False)), "bitmap" if t.get("poly2mask", True) else "polygon"
    return False, "bitmap"


def read_dataset_stats(cfg: Any) -> Tuple[Optional[DatasetStats], str]:
    """The instance statistics of the config's training annotations.

    Returns:
        ``(stats, why)``: the statistics, or ``None`` with the reason they could not be read
        (no annotation file in the config, the file is absent, or it is not COCO json).
    """
    leaves = [ds for _, _, ds in dataset_cfgs(cfg, ["train"]) if ds.get("ann_file")]
    paths = [data_path(ds.get("data_root"), ds["ann_file"]) for ds in leaves]
    if not paths:
        return None, "the training dataset names no annotation file"
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        return None, f"annotation file {missing[0]} not found"
    found = []
    for path, ds in zip(paths, leaves):
        filter_empty = bool((ds.get("filter_cfg") or {}).get("filter_empty_gt", False))
        try:
            found.append(coco_instance_counts(path, filter_empty))
        except (ValueError, KeyError, TypeError) as err:
            return None, f"{path} is not a COCO annotation file ({one_line(err)})"
    counts = [n for c, _, _, _ in found for n in c]
    largest = max((big for _, _, big, _ in found), key=lambda hw: hw[0] * hw[1])
    if not counts:
        return None, f"no image with instances in {', '.join(paths)}"
    try:
        h, w, how = training_shape(cfg)
    except PlanError:
        (h, w), how = largest, "no resize in the pipeline: the largest image"
    loads, fmt = _mask_loading(cfg)
    return DatasetStats(images=len(counts), instances_p50=percentile(counts, 50), instances_p95=percentile(counts, 95),
                        instances_max=max(counts), masks=loads and any(m for _, m, _, _ in found),
                        mask_format=fmt, largest_image=largest, shape=(h, w), shape_source=how,
                        box_sides=box_side_sample([wh for *_, sides in found for wh in sides])), ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print the statistics of a config's training annotations."""
    ap = argparse.ArgumentParser(description="instances per image of a config's training annotations")
    ap.add_argument("config")
    args = ap.parse_args(argv)
    try:
        stats, why = read_dataset_stats(load_config(args.config))
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(stats.describe() if stats else f"no dataset statistics: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
