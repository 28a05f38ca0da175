"""The synthetic training batch the planner measures with: one place for what the inputs hold.

A batch has the config's training resolution and, per image, ``BOXES_PER_IMAGE`` random boxes
(with masks where the model has a mask head) for mmdet, a random label map for mmseg.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

__all__ = ["BOXES_PER_IMAGE", "synthetic_batch"]

BOXES_PER_IMAGE = 8


def _num_classes(node: Any) -> Optional[int]:
    if isinstance(node, dict):
        if isinstance(node.get("num_classes"), int):
            return node["num_classes"]
        for v in node.values():
            found = _num_classes(v)
            if found is not None:
                return found
    elif isinstance(node, (list, tuple)):
        for v in node:
            found = _num_classes(v)
            if found is not None:
                return found
    return None


def synthetic_batch(cfg: Any, model: Any, batch: int, shape: Tuple[int, int], device: Any) -> Dict[str, Any]:
    """A packed training batch (``inputs``, ``data_samples``) of ``batch`` images of ``shape`` for the model."""
    import torch

    h, w = shape
    classes = _num_classes(cfg.model) or 80
    if cfg.default_scope == "mmseg":
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        gen = torch.Generator().manual_seed(0)
        inputs, samples = [], []
        for _ in range(batch):
            inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
            s = SegDataSample()
            s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0),
                                flip=False, img_path="<synthetic>"))
            s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w), generator=gen))
            samples.append(s)
        return dict(inputs=inputs, data_samples=samples)
    from mmdet.testing import demo_mm_inputs

    return demo_mm_inputs(batch, [(3, h, w)] * batch, num_items=[BOXES_PER_IMAGE] * batch,
                          num_classes=max(2, classes), with_mask=bool(getattr(model, "with_mask", False)),
                          device=str(device))

