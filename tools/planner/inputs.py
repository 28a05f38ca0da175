"""The batch the planner measures with: synthetic at the training resolution, or the data's densest images."""
from __future__ import annotations

import importlib
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import PlanError

__all__ = ["BOXES_PER_IMAGE", "synthetic_batch", "dataset_batch"]

BOXES_PER_IMAGE = 8


def _num_classes(node: Any) -> Optional[int]:
    """The first ``num_classes`` in a (nested) model config."""
    if isinstance(node, dict):
        if isinstance(node.get("num_classes"), int):
            return node["num_classes"]
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        return next((n for n in map(_num_classes, node) if n is not None), None)
    return None


def synthetic_batch(cfg: Any, model: Any, batch: int, shape: Tuple[int, int], device: Any,
                    instances: int = BOXES_PER_IMAGE, mask_format: str = "bitmap",
                    box_sides: Optional[Sequence[Sequence[float]]] = None) -> Dict[str, Any]:
    """A packed training batch (``inputs``, ``data_samples``) of ``batch`` images of ``shape`` for the model;
    detectors: ``instances`` boxes per image, drawn from ``box_sides`` (width, height as fractions of
    the image's; ``None``: 2-20 % of each side), with ``mask_format`` masks filling them where the model has a
    mask head (``'bitmap'``: a uint8 image-sized plane per instance, as ``LoadAnnotations`` makes them)."""
    h, w = shape
    classes = _num_classes(cfg.model) or 80
    if cfg.default_scope == "mmseg":
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        gen = torch.Generator().manual_seed(0)
        inputs, samples = [], []
        for _ in range(batch):
            inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
            samples.append(SegDataSample(metainfo=_meta(h, w), gt_sem_seg=PixelData(
                data=torch.randint(0, classes, (1, h, w), generator=gen))))
        return dict(inputs=inputs, data_samples=samples)
    return _det_inputs(batch, (h, w), instances, max(2, classes), mask_format if getattr(model, "with_mask", False)
                       else None, device, box_sides)


def _meta(h: int, w: int) -> Dict[str, Any]:
    return dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0), flip=False,
                img_path="<synthetic>")


def _det_inputs(batch: int, shape: Tuple[int, int], instances: int, classes: int, mask_format: Optional[str],
                device: Any, box_sides: Optional[Sequence[Sequence[float]]]) -> Dict[str, Any]:
    """A detection batch as :func:`synthetic_batch` describes it; the masks fill the boxes."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks, PolygonMasks
    from mmengine.structures import InstanceData

    h, w = shape
    rng = np.random.default_rng(0)
    inputs, samples = [], []
    for _ in range(batch):
        if box_sides:
            size = np.asarray(box_sides, dtype=np.float64)[rng.integers(0, len(box_sides), instances)] * (w, h)
        else:
            size = rng.uniform(0.02, 0.2, (instances, 2)) * (w, h)
        size = np.clip(size, 1.0, (w, h))
        x0y0 = rng.uniform(0, 1, (instances, 2)) * ((w, h) - size)
        boxes = np.concatenate([x0y0, x0y0 + size], axis=1).astype(np.float32)
        gt = InstanceData(bboxes=torch.from_numpy(boxes).to(device),
                          labels=torch.from_numpy(rng.integers(0, classes, instances)).to(device))
        if mask_format == "polygon":
            gt.masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].astype(np.float64)] for b in boxes], h, w)
        elif mask_format:
            planes = np.zeros((instances, h, w), dtype=np.uint8)
            for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
                planes[k, y0:y1 + 1, x0:x1 + 1] = 1
            gt.masks = BitmapMasks(planes, h, w)
        samples.append(DetDataSample(metainfo=dict(_meta(h, w), img_id=0), gt_instances=gt))
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)).to(device))
    return dict(inputs=inputs, data_samples=samples)


def dataset_batch(cfg: Any, batch: int) -> Tuple[Dict[str, Any], int, Tuple[int, int]]:
    """The ``batch`` distinct training images with the most instances, through the config's training
    pipeline, collated as the dataloader does; the most instances of one of them; the largest
    (height, width) among them."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope

    registry = importlib.import_module(f"{cfg.default_scope}.registry")
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        dataset = registry.DATASETS.build(cfg.train_dataloader.dataset)
        counts: Dict[str, Tuple[int, int]] = {}
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            kept = sum(1 for inst in info.get("instances", []) if not inst.get("ignore_flag", 0))
            counts.setdefault(info.get("img_path", str(i)), (kept, i))
        top = sorted(counts.values(), reverse=True)[:batch]
        if len(top) < batch:
            raise PlanError(f"the training dataset has {len(top)} images, fewer than batch {batch}")
        packed = pseudo_collate([dataset[i] for _, i in top])
    shape = (max(i.shape[-2] for i in packed["inputs"]), max(i.shape[-1] for i in packed["inputs"]))
    return packed, top[0][0], shape
