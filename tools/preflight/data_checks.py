"""Whether the datasets of a config are in place, and where to put them when they are not."""
import json
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

from .datasets import DataError, _is_remote, _is_synthetic_root, data_path, dataset_cfgs

__all__ = ["data_help", "check_data"]

#: Annotation files above this size are not parsed by the pre-flight check.
_MAX_PARSE_BYTES = 32 * 1024 * 1024
_EVALUATOR_KEYS = {"val": "val_evaluator", "test": "test_evaluator"}


def data_help(scope: str, split: str = "train", dataset_type: Optional[str] = None) -> str:
    """How to provide the dataset of an mmdet (COCO) or mmseg (ADE20K, Cityscapes) config."""
    if scope != "mmseg":
        return ("Put COCO 2017 under data/coco/: data/coco/annotations/instances_{train,val}2017.json, "
                "data/coco/train2017/*.jpg, data/coco/val2017/*.jpg (e.g. `mkdir -p data && ln -s "
                "/path/to/coco data/coco`), or point the config at your copy with `--cfg-options "
                "train_dataloader.dataset.data_root=/path/to/coco/ val_dataloader.dataset.data_root="
                "/path/to/coco/ test_dataloader.dataset.data_root=/path/to/coco/ "
                "val_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json "
                "test_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json`.\n"
                "To try RevBiFPN without downloading a dataset, run the quickstart on the generated "
                "synthetic shapes dataset: `python tools/quickstart.py` (or `python tools/train.py "
                "configs/quickstart/faster_rcnn_revbifpn_s0_synthetic.py`).")
    if dataset_type == "CityscapesDataset":
        where = ("Put Cityscapes under data/cityscapes/: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
                 "gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png (make the labelTrainIds maps with "
                 "mmseg's `tools/dataset_converters/cityscapes.py data/cityscapes`), e.g. `mkdir -p data && "
                 "ln -s /path/to/cityscapes data/cityscapes`, or point the config at your copy with "
                 f"`--cfg-options {split}_dataloader.dataset.data_root=/path/to/cityscapes` (and the same "
                 "for val_dataloader / test_dataloader).")
    else:
        where = ("Put ADE20K (ADEChallengeData2016) under data/ade/ADEChallengeData2016/ "
                 "(images/{training,validation}/*.jpg, annotations/{training,validation}/*.png), e.g. "
                 "`mkdir -p data/ade && ln -s /path/to/ADEChallengeData2016 data/ade/`, or point the "
                 f"config at your copy with `--cfg-options {split}_dataloader.dataset.data_root=/path/to/"
                 "ADEChallengeData2016` (and the same for val_dataloader / test_dataloader).")
    return (f"{where}\nTo try RevBiFPN segmentation without downloading a dataset: `python tools/train.py "
            "configs/quickstart/fcn_revbifpn_s0_synthetic_seg.py` (uses a generated dataset).")


def _count_coco_images(path: str) -> Optional[int]:
    """Number of images of a small COCO-style JSON file (None: not parsed or not COCO)."""
    try:
        if osp.getsize(path) > _MAX_PARSE_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return len(data["images"])
    return None


def _dir_has_files(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False


def check_data(cfg: Any, splits: Sequence[str], scope: Optional[str] = None) -> None:
    """Check that the datasets of ``splits`` (``'train'``, ``'val'``, ``'test'``) are in place.

    Checks the annotation file, the image / label-map folders of every dataset, and
    the ``ann_file`` of the matching evaluators (COCO ``CocoMetric``). Remote
    (``s3://`` ...) paths are not checked.

    Raises:
        DataError: naming the missing file or folder, the config key it comes from,
            and how to provide the data (or run the quickstart).
    """
    scope = scope or cfg.get("default_scope", None) or "mmdet"
    leaves = dataset_cfgs(cfg, splits)
    found = [(split, p) for split, where, ds in leaves for p in _dataset_problems(split, where, ds)]
    found += [(split, p) for split in splits for p in _evaluator_problems(cfg, split)]
    if found:  # each problem once, in order; the help names the first split with one
        dataset_type = next((ds["type"] for _, _, ds in leaves if ds.get("type")), None)
        raise DataError("Dataset not found:\n  - " + "\n  - ".join(dict.fromkeys(p for _, p in found)) + "\n"
                        + data_help(scope, found[0][0], dataset_type))


def _dataset_problems(split: str, where: str, ds: Dict[str, Any]) -> List[str]:
    """What is missing of one dataset (data root, annotation file, folders); raises :class:`DataError` if empty."""
    root = ds.get("data_root")
    if root is not None and _is_remote(str(root)):
        return []
    prefix = ds.get("data_prefix") or {}
    folders = [(key, sub) for key, sub in prefix.items() if isinstance(sub, str) and sub] \
        if isinstance(prefix, dict) else []
    ann = ds.get("ann_file") or ""
    if root and not osp.isdir(root):
        expected = ([f"annotation file {data_path(root, ann)}"] if ann else []) + \
            [f"{key} folder {data_path(root, sub)}" for key, sub in folders]
        return [f"data root {root!r} does not exist ({where}.data_root)"
                + (f"; expected {' and '.join(expected)}" if expected else "")]
    problems = []
    if ann and not _is_remote(ann):
        path = data_path(root, ann)
        if not osp.isfile(path):
            problems.append(f"annotation file {path!r} not found ({where}.ann_file)")
        elif _count_coco_images(path) == 0:
            raise DataError(
                f"The {split} dataset is empty: {path!r} ({where}.ann_file) lists 0 images. "
                "Point the config at a dataset with images"
                + (f" (regenerate the synthetic one with `python tools/synthetic_data.py "
                   f"--root {root} --overwrite`)" if _is_synthetic_root(root) else "") + ".")
    for key, sub in folders:
        path = data_path(root, sub)
        if _is_remote(sub):
            continue
        if not osp.isdir(path):
            problems.append(f"folder {path!r} not found ({where}.data_prefix.{key})")
        elif not ann and not _dir_has_files(path):
            raise DataError(f"The {split} dataset is empty: folder {path!r} "
                            f"({where}.data_prefix.{key}) holds no files.")
    return problems


def _evaluator_problems(cfg: Any, split: str) -> List[str]:
    """The missing ``ann_file`` of the split's evaluators (COCO ``CocoMetric``)."""
    key = _EVALUATOR_KEYS.get(split)
    evaluators = cfg.get(key, None) if key else None
    if isinstance(evaluators, dict):
        evaluators = [evaluators]
    problems = []
    for i, ev in enumerate(evaluators or []):
        ann = ev.get("ann_file") if isinstance(ev, dict) else None
        if isinstance(ann, str) and ann and not _is_remote(ann) and not osp.isfile(ann):
            loc = key if len(evaluators) == 1 else f"{key}[{i}]"
            problems.append(f"annotation file {ann!r} not found ({loc}.ann_file)")
    return problems
