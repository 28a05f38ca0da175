"""Support code of ``tools/train.py``, ``tools/test.py`` and ``tools/quickstart.py``.

For MMDetection and MMSegmentation configs alike (the config's ``default_scope`` selects the
codebase): the embedded synthetic dataset where a config points at a missing one, data checks that
turn a missing COCO / ADE20K into one message that says where to put it, checkpoint checks and the
resume choice (the distributed start and stop are :mod:`cpu_dist`'s). Reports through return values
and exceptions (:class:`DataError`); the scripts print. mmengine is imported lazily.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from revbifpn_mm.mm.backbone import config_advice
from revbifpn_mm.mm.compat import register_scope
from revbifpn_mm.models.pretrained import check_local_checkpoint

__all__ = ["DataError", "SYNTHETIC_ROOT", "register_scope", "dataset_cfgs", "ensure_synthetic_data", "check_data",
           "check_pretrained", "check_built_datasets", "data_help", "parse_with_launcher", "mmcv_ops_problem",
           "loadable", "resume_checkpoint", "load_cfg", "build_runner", "leaf_datasets"]

#: Data root of the quickstart configs (relative to the repository root).
SYNTHETIC_ROOT = "data/synthetic_coco"
_SYNTHETIC_NAME = osp.basename(SYNTHETIC_ROOT)
#: Annotation files above this size are not parsed by the pre-flight check.
_MAX_PARSE_BYTES = 32 * 1024 * 1024
_SPLIT_KEYS = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}
_EVALUATOR_KEYS = {"val": "val_evaluator", "test": "test_evaluator"}

QUICKSTART_HINT = ("To try RevBiFPN without downloading a dataset, run the quickstart on the generated "
                   "synthetic shapes dataset: `python tools/quickstart.py` (or `python tools/train.py "
                   "configs/quickstart/faster_rcnn_revbifpn_s0_synthetic.py`).")


class DataError(RuntimeError):
    """A dataset of the config is missing, incomplete or empty (the message says how to fix it)."""


def mmcv_ops_problem() -> Optional[str]:
    """Why mmcv's compiled ops cannot serve this run, or None: checked by running them on the device
    the runner will use (CUDA when torch sees a GPU, else the CPU), before anything is built."""
    import torch
    try:
        from revbifpn_mm.mm import check_mmcv_ops
        check_mmcv_ops("cuda" if torch.cuda.is_available() else "cpu")
    except ImportError as err:  # MMCVOpsMissingError included
        return str(err)
    return None


def parse_with_launcher(parser: Any, argv: Optional[Sequence[str]] = None) -> Any:
    """Add mmengine's ``--launcher`` / ``--local-rank`` options to ``parser`` and parse ``argv``.

    ``torch.distributed.launch`` passes ``--local-rank`` (``--local_rank`` on old
    versions); its value becomes ``LOCAL_RANK`` unless the launcher already set it.
    """
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def load_cfg(args: Any) -> Any:
    """The config of ``args.config`` with ``--launcher``, ``--cfg-options`` and ``--work-dir`` applied
    (default work dir ``./work_dirs/<config name>``, as mmdet's and mmseg's tools)."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return cfg


# --------------------------------------------------------------------------- datasets
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
        loader = cfg.get(_SPLIT_KEYS[split], None)
        if not isinstance(loader, dict) or not isinstance(loader.get("dataset"), dict):
            continue
        for where, ds in leaf_datasets(loader["dataset"], f"{_SPLIT_KEYS[split]}.dataset"):
            out.append((split, where, ds))
    return out


def _is_remote(path: str) -> bool:
    return "://" in path or path.startswith("s3:")


def _join(root: Optional[str], path: str) -> str:
    if root and not osp.isabs(path) and not _is_remote(path):
        return osp.join(root, path)
    return path


def _is_synthetic_root(root: Optional[str]) -> bool:
    return bool(root) and osp.basename(osp.normpath(str(root))) == _SYNTHETIC_NAME


def ensure_synthetic_data(cfg: Any, splits: Sequence[str] = ("train", "val", "test")) -> List[str]:
    """Generate the synthetic dataset for every ``.../synthetic_coco`` data root that is absent.

    A root counts as absent when it does not exist or is an empty directory; an
    existing dataset is left alone (:func:`synthetic_data.generate_synthetic_coco`
    is idempotent and safe against concurrent writers, e.g. several DDP ranks).

    Returns:
        The roots that were generated.
    """
    roots = []
    for _split, _where, ds in dataset_cfgs(cfg, splits):
        root = ds.get("data_root")
        if _is_synthetic_root(root) and root not in roots:
            roots.append(root)
    generated = []
    for root in roots:
        marker = osp.join(root, ".complete")
        if osp.isfile(marker):
            continue
        if osp.isdir(root) and os.listdir(root):
            continue  # something else is there: check_data reports it if it is unusable
        from synthetic_data import generate_synthetic_coco
        generate_synthetic_coco(root)
        generated.append(root)
    return generated


def data_help(scope: str, split: str = "train", dataset_type: Optional[str] = None) -> str:
    """How to provide the dataset of an mmdet (COCO) or mmseg (ADE20K, Cityscapes) config."""
    if scope == "mmseg" and dataset_type == "CityscapesDataset":
        where = ("Put Cityscapes under data/cityscapes/: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
                 "gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png (make the labelTrainIds maps with "
                 "mmseg's `tools/dataset_converters/cityscapes.py data/cityscapes`), e.g. `mkdir -p data && "
                 "ln -s /path/to/cityscapes data/cityscapes`, or point the config at your copy with "
                 f"`--cfg-options {_SPLIT_KEYS[split]}.dataset.data_root=/path/to/cityscapes` (and the same "
                 "for val_dataloader / test_dataloader).")
    elif scope == "mmseg":
        where = ("Put ADE20K (ADEChallengeData2016) under data/ade/ADEChallengeData2016/ "
                 "(images/{training,validation}/*.jpg, annotations/{training,validation}/*.png), e.g. "
                 "`mkdir -p data/ade && ln -s /path/to/ADEChallengeData2016 data/ade/`, or point the "
                 f"config at your copy with `--cfg-options {_SPLIT_KEYS[split]}.dataset.data_root=/path/to/"
                 "ADEChallengeData2016` (and the same for val_dataloader / test_dataloader).")
    if scope == "mmseg":
        quick = ("To try RevBiFPN segmentation without downloading a dataset: `python tools/train.py "
                 "configs/quickstart/fcn_revbifpn_s0_synthetic_seg.py` (uses a generated dataset).")
        return f"{where}\n{quick}"
    where = ("Put COCO 2017 under data/coco/: data/coco/annotations/instances_{train,val}2017.json, "
             "data/coco/train2017/*.jpg, data/coco/val2017/*.jpg (e.g. `mkdir -p data && ln -s "
             "/path/to/coco data/coco`), or point the config at your copy with `--cfg-options "
             "train_dataloader.dataset.data_root=/path/to/coco/ val_dataloader.dataset.data_root="
             "/path/to/coco/ test_dataloader.dataset.data_root=/path/to/coco/ "
             "val_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json "
             "test_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json`.")
    return f"{where}\n{QUICKSTART_HINT}"


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
    problems: List[str] = []
    first_split = None
    dataset_type = None
    for split, where, ds in dataset_cfgs(cfg, splits):
        dataset_type = dataset_type or ds.get("type")
        found = _dataset_problems(split, where, ds)
        problems += found
        first_split = first_split or (split if found else None)
    for split in splits:
        found = _evaluator_problems(cfg, split)
        problems += found
        first_split = first_split or (split if found else None)
    if problems:
        seen: List[str] = []
        for p in problems:
            if p not in seen:
                seen.append(p)
        raise DataError("Dataset not found:\n  - " + "\n  - ".join(seen) + "\n"
                        + data_help(scope, first_split or "train", dataset_type))


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
        expected = ([f"annotation file {_join(root, ann)}"] if ann else []) + \
            [f"{key} folder {_join(root, sub)}" for key, sub in folders]
        return [f"data root {root!r} does not exist ({where}.data_root)"
                + (f"; expected {' and '.join(expected)}" if expected else "")]
    problems = []
    if ann and not _is_remote(ann):
        path = _join(root, ann)
        if not osp.isfile(path):
            problems.append(f"annotation file {path!r} not found ({where}.ann_file)")
        elif _count_coco_images(path) == 0:
            raise DataError(
                f"The {split} dataset is empty: {path!r} ({where}.ann_file) lists 0 images. "
                "Point the config at a dataset with images"
                + (f" (regenerate the synthetic one with `python tools/synthetic_data.py "
                   f"--root {root} --overwrite`)" if _is_synthetic_root(root) else "") + ".")
    for key, sub in folders:
        path = _join(root, sub)
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


def check_pretrained(cfg: Any) -> None:
    """Raise the loader's ``FileNotFoundError`` (with the fix) when the backbone's local checkpoint is missing.

    URLs are not fetched here: the backbone downloads and verifies them when it is initialised.
    """
    model = cfg.get("model", None)
    backbone = model.get("backbone", None) if isinstance(model, dict) else None
    init_cfg = backbone.get("init_cfg", None) if isinstance(backbone, dict) else None
    if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained":
        return
    ckpt = init_cfg.get("checkpoint")
    if ckpt and not _is_remote(str(ckpt)) and ":" not in str(ckpt).split("/")[0]:
        with config_advice():
            check_local_checkpoint(str(ckpt))


def loadable(path: str) -> bool:
    """Whether ``path`` is a complete checkpoint: a zip archive (``torch.save``'s format) whose
    members all pass their CRC check. A save cut short leaves a file without its central directory."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def _checkpoints_newest_first(work_dir: str) -> List[str]:
    import glob
    import re

    def key(path: str) -> Tuple[int, float]:
        m = re.search(r"(\d+)\.pth$", path)
        return (int(m.group(1)) if m else -1, osp.getmtime(path))
    return sorted(glob.glob(osp.join(work_dir, "*.pth")), key=key, reverse=True)


def resume_checkpoint(work_dir: str, requested: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """What ``--resume`` loads: ``(path, warning)``; ``(None, None)`` where there is nothing to resume.

    ``requested`` None (``--resume`` without a path) means the one ``work_dir/last_checkpoint``
    names. If that one is incomplete or corrupt (a save cut short), the newest complete checkpoint
    of ``work_dir`` is taken instead, with a warning; an explicitly requested one is never replaced.

    Raises:
        DataError: The checkpoint to resume from is incomplete or corrupt and no other one is (the
            message names the file and what to do), or an explicit path does not exist.
    """
    if requested is not None:
        if not osp.isfile(requested):
            raise DataError(f"--resume checkpoint not found: {requested!r}")
        if loadable(requested):
            return requested, None
        alt = next((p for p in _checkpoints_newest_first(osp.dirname(requested) or ".") if loadable(p)), None)
        raise DataError(f"--resume checkpoint {requested!r} is incomplete or corrupt (a save cut short?): "
                        + (f"resume from {alt!r} instead (--resume {alt})" if alt else
                           "no complete checkpoint beside it; start again without --resume"))
    marker = osp.join(work_dir, "last_checkpoint")
    latest = open(marker).read().strip() if osp.isfile(marker) else None
    if latest and osp.isfile(latest) and loadable(latest):
        return latest, None
    good = next((p for p in _checkpoints_newest_first(work_dir) if loadable(p)), None)
    if latest is None and good is None:
        return None, None  # a fresh run: mmengine starts from scratch
    if good is None:
        raise DataError(f"cannot resume: the latest checkpoint {latest!r} ({marker}) is "
                        f"{'missing' if not osp.isfile(latest or '') else 'incomplete or corrupt (a save cut short?)'} "
                        f"and {work_dir!r} holds no complete one; start again without --resume")
    if good == latest:
        return good, None
    return good, (f"the latest checkpoint {latest!r} is {'missing' if not osp.isfile(latest or '') else 'incomplete or corrupt'}"
                  f" (a save cut short?): resuming from {good!r}, the newest complete one")


def _dataset_len(loop: Any) -> Optional[int]:
    loader = getattr(loop, "dataloader", None)
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def build_runner(cfg: Any, splits: Sequence[str]) -> Any:
    """Build the mmengine runner of ``cfg`` (``runner_type`` honoured) and check its datasets.

    Raises:
        DataError: A dataset of ``splits`` is empty (see :func:`check_built_datasets`).
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    check_built_datasets(runner, splits)
    return runner


def check_built_datasets(runner: Any, splits: Sequence[str]) -> Dict[str, int]:
    """Build the runner's loops of ``splits`` and raise :class:`DataError` if a dataset is empty.

    Returns:
        The number of samples per split.
    """
    sizes = {}
    for split in splits:
        loop = {"train": "train_loop", "val": "val_loop", "test": "test_loop"}[split]
        if getattr(runner, f"_{loop}", None) is None:
            continue
        n = _dataset_len(getattr(runner, loop))
        if n is None:
            continue
        sizes[split] = n
        if n == 0:
            ds_cfg = runner.cfg.get(_SPLIT_KEYS[split], {}).get("dataset", {})
            hint = ""
            if isinstance(ds_cfg, dict) and isinstance(ds_cfg.get("filter_cfg"), dict):
                hint = (" (after filter_cfg="
                        f"{dict(ds_cfg['filter_cfg'])}: images without annotations or smaller than "
                        "min_size are dropped)")
            raise DataError(f"The {split} dataset of {_SPLIT_KEYS[split]} is empty: 0 samples{hint}. "
                            "Check its data_root, ann_file and data_prefix, and that the annotation "
                            "file lists images with annotations.")
    return sizes
