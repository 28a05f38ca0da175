"""The datasets of a config: its leaf dataset configs, the synthetic dataset where it is absent, whether the
others are in place (and where to put them when they are not), and whether the built ones hold samples."""
import json
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Sized, Tuple

__all__ = ["DataError", "leaf_datasets", "dataset_cfgs", "data_path", "ensure_synthetic_data", "data_help",
           "check_data", "check_built_datasets"]

#: Annotation files above this size are not parsed by the pre-flight check.
_MAX_PARSE_BYTES = 32 * 1024 * 1024


class DataError(RuntimeError):
    """A dataset of the config is missing, incomplete or empty (the message says how to fix it)."""


def leaf_datasets(ds: Any, where: str = "dataset") -> Iterator[Tuple[str, Dict[str, Any]]]:
    """``(config path, dataset cfg)`` of the leaf datasets of ``ds`` (through RepeatDataset / ConcatDataset / ...)."""
    if not isinstance(ds, dict):
        return
    if isinstance(ds.get("datasets"), (list, tuple)):
        for i, sub in enumerate(ds["datasets"]):
            yield from leaf_datasets(sub, f"{where}.datasets[{i}]")
    elif isinstance(ds.get("dataset"), dict):
        yield from leaf_datasets(ds["dataset"], f"{where}.dataset")
    else:
        yield where, ds


def dataset_cfgs(cfg: Any, splits: Sequence[str]) -> List[Tuple[str, str, Dict[str, Any]]]:
    """``(split, config path, dataset cfg)`` of every leaf dataset of the given splits."""
    out = []
    for split in splits:
        loader = cfg.get(f"{split}_dataloader", None)
        if isinstance(loader, dict) and isinstance(loader.get("dataset"), dict):
            out += [(split, where, ds) for where, ds in leaf_datasets(loader["dataset"], f"{split}_dataloader.dataset")]
    return out


def _is_remote(path: str) -> bool:
    return "://" in path or path.startswith("s3:")


def data_path(root: Optional[str], path: str) -> str:
    """``path`` of a dataset config (``ann_file``, a ``data_prefix`` folder) joined to its ``data_root``,
    unless it is absolute or remote."""
    if root and not osp.isabs(path) and not _is_remote(path):
        return osp.join(root, path)
    return path


def _is_synthetic_root(root: Optional[str]) -> bool:
    """Whether ``root`` is a ``.../synthetic_coco`` data root (the quickstart configs' ``data/synthetic_coco``)."""
    return bool(root) and osp.basename(osp.normpath(str(root))) == "synthetic_coco"


def ensure_synthetic_data(cfg: Any, splits: Sequence[str] = ("train", "val", "test")) -> List[str]:
    """Generate the synthetic dataset for every ``.../synthetic_coco`` data root that is absent.

    A root counts as absent when it does not exist or is an empty directory; an
    existing dataset is left alone (:func:`synthetic_data.generate_synthetic_coco`
    is idempotent and safe against concurrent writers, e.g. several DDP ranks).

    Returns:
        The roots that were generated.
    """
    roots = dict.fromkeys(ds["data_root"] for _, _, ds in dataset_cfgs(cfg, splits)
                          if _is_synthetic_root(ds.get("data_root")))
    # a complete dataset or anything else there is left alone: check_data reports it if it is unusable
    absent = [root for root in roots if not (osp.isdir(root) and os.listdir(root))]
    for root in absent:
        from synthetic_data import generate_synthetic_coco
        generate_synthetic_coco(root)
    return absent


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
    images = data.get("images") if isinstance(data, dict) else None
    return len(images) if isinstance(images, list) else None


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
    folders = [(key, sub) for key, sub in prefix.items() if isinstance(sub, str) and sub and not _is_remote(sub)] \
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
        if not osp.isdir(path):
            problems.append(f"folder {path!r} not found ({where}.data_prefix.{key})")
        elif not ann and not _dir_has_files(path):
            raise DataError(f"The {split} dataset is empty: folder {path!r} "
                            f"({where}.data_prefix.{key}) holds no files.")
    return problems


def _evaluator_problems(cfg: Any, split: str) -> List[str]:
    """The missing ``ann_file`` of the split's evaluators (COCO ``CocoMetric``)."""
    key = f"{split}_evaluator"
    evaluators = cfg.get(key, None) if split in ("val", "test") else None
    if isinstance(evaluators, dict):
        evaluators = [evaluators]
    problems = []
    for i, ev in enumerate(evaluators or []):
        ann = ev.get("ann_file") if isinstance(ev, dict) else None
        if isinstance(ann, str) and ann and not _is_remote(ann) and not osp.isfile(ann):
            loc = key if len(evaluators) == 1 else f"{key}[{i}]"
            problems.append(f"annotation file {ann!r} not found ({loc}.ann_file)")
    return problems


def check_built_datasets(runner: Any, splits: Sequence[str]) -> None:
    """Build the runner's loops of ``splits`` and raise :class:`DataError` if a dataset is empty."""
    for split in splits:
        if getattr(runner, f"_{split}_loop", None) is None:
            continue
        dataset = getattr(getattr(runner, f"{split}_loop").dataloader, "dataset", None)  # builds the loop
        if not isinstance(dataset, Sized) or len(dataset) != 0:
            continue
        ds_cfg = runner.cfg.get(f"{split}_dataloader", {}).get("dataset", {})
        hint = ""
        if isinstance(ds_cfg, dict) and isinstance(ds_cfg.get("filter_cfg"), dict):
            hint = (f" (after filter_cfg={dict(ds_cfg['filter_cfg'])}: images without annotations or smaller than "
                    "min_size are dropped)")
        raise DataError(f"The {split} dataset of {split}_dataloader is empty: 0 samples{hint}. "
                        "Check its data_root, ann_file and data_prefix, and that the annotation "
                        "file lists images with annotations.")
