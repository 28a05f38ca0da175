"""The datasets of a config: its leaf dataset configs, and the synthetic dataset where it is absent."""
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["DataError", "leaf_datasets", "dataset_cfgs", "data_path", "ensure_synthetic_data"]


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
    generated = []
    for root in roots:
        if osp.isfile(osp.join(root, ".complete")) or (osp.isdir(root) and os.listdir(root)):
            continue  # complete, or something else is there: check_data reports it if it is unusable
        from synthetic_data import generate_synthetic_coco
        generate_synthetic_coco(root)
        generated.append(root)
    return generated
