"""Pictures of a model's predictions on a few validation images (the quickstart's "show").

:func:`save_prediction_pictures` runs a trained (or untrained) mmdet detector or mmseg
segmentor on the first images of a dataset and draws, side by side, the ground truth (left)
and the prediction (right) with the codebase's own visualizer: mmdet's
``DetLocalVisualizer`` (boxes, labels, scores and instance masks) or mmseg's
``SegLocalVisualizer`` (a colour overlay of the label map). mmdet / mmseg / mmcv are
imported when it is called.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Any, List, Optional

__all__ = ["save_prediction_pictures"]


def _visualizer(scope: str, metainfo: dict) -> Any:
    classes = list(metainfo.get("classes", ()))
    palette = metainfo.get("palette")
    if scope == "mmseg":
        from mmseg.visualization import SegLocalVisualizer

        vis = SegLocalVisualizer.get_instance("revbifpn_mm_predictions_mmseg", alpha=0.6)
        vis.set_dataset_meta(classes=classes, palette=palette)
        return vis
    from mmdet.visualization import DetLocalVisualizer

    vis = DetLocalVisualizer.get_instance("revbifpn_mm_predictions_mmdet")
    vis.dataset_meta = dict(classes=classes, palette=palette)
    return vis


def save_prediction_pictures(model: Any, dataset: Any, out_dir: str, num: int = 4, score_thr: float = 0.3,
                             scope: Optional[str] = None) -> List[str]:
    """Draw the model's predictions on the first ``num`` images of ``dataset``.

    Args:
        model: an mmdet detector or mmseg segmentor (any device); it is put in eval mode for
            the predictions and back in its previous mode afterwards.
        dataset: a built mmdet/mmseg dataset whose items are packed inputs with ground truth
            (e.g. the runner's validation dataset).
        out_dir: folder for the pictures (created).
        num: number of images (fewer if the dataset is smaller).
        score_thr: detections below this score are not drawn (mmdet only).
        scope: ``'mmdet'`` or ``'mmseg'``; default: from the dataset's package.

    Returns:
        The paths of the PNG files written, ``<out_dir>/<image name>.png``: the ground truth
        on the left, the prediction on the right, each at the image's original size.

    Raises:
        ValueError: ``num`` is below 1 or the dataset is empty.
    """
    import mmcv
    import torch
    from mmengine.dataset import pseudo_collate

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: no image to draw predictions on")
    if scope is None:
        scope = "mmseg" if type(dataset).__module__.startswith("mmseg") else "mmdet"
    vis = _visualizer(scope, dict(dataset.metainfo))
    os.makedirs(out_dir, exist_ok=True)
    was_training = model.training
    model.eval()
    paths = []
    try:
        for idx in range(min(num, len(dataset))):
            item = dataset[idx]
            with torch.no_grad():
                sample = model.test_step(pseudo_collate([item]))[0]
            image = mmcv.imread(sample.img_path, channel_order="rgb")
            name = osp.splitext(osp.basename(sample.img_path))[0]
            path = osp.join(out_dir, f"{name}.png")
            kwargs = dict(pred_score_thr=score_thr) if scope == "mmdet" else {}
            vis.add_datasample(name, image, data_sample=sample.cpu(), draw_gt=True, draw_pred=True, show=False,
                               out_file=path, **kwargs)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
