"""The datasets of a config: its leaf dataset configs, and the synthetic dataset generated where a
config points at an absent one."""
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["DataError", "SYNTHETIC_ROOT", "leaf_datasets", "dataset_cfgs", "ensure_synthetic_data"]

#: Data root of the quickstart configs (relative to the repository root).
SYNTHETIC_ROOT = "data/synthetic_coco"
_SYNTHETIC_NAME = osp.basename(SYNTHETIC_ROOT)
_SPLIT_KEYS = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}


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
        loader = cfg.get(_SPLIT_KEYS[split], None)
        if not isinstance(loader, dict) or not isinstance(loader.get("dataset"), dict):
            continue
        for where, ds in leaf_datasets(loader["dataset"], f"{_SPLIT_KEYS[split]}.dataset"):
            out.append((split, where, ds))
    return out


def _is_remote(path: str) -> bool:
    return "://" in path or path.startswith("s3:")


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
