"""The mmengine runner of a config, built with the datasets of its loops checked."""
from typing import Any, Dict, Optional, Sequence

from .datasets import DataError

__all__ = ["build_runner", "check_built_datasets"]


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
        if getattr(runner, f"_{split}_loop", None) is None:
            continue
        n = _dataset_len(getattr(runner, f"{split}_loop"))
        if n is None:
            continue
        sizes[split] = n
        if n == 0:
            ds_cfg = runner.cfg.get(f"{split}_dataloader", {}).get("dataset", {})
            hint = ""
            if isinstance(ds_cfg, dict) and isinstance(ds_cfg.get("filter_cfg"), dict):
                hint = (" (after filter_cfg="
                        f"{dict(ds_cfg['filter_cfg'])}: images without annotations or smaller than "
                        "min_size are dropped)")
            raise DataError(f"The {split} dataset of {split}_dataloader is empty: 0 samples{hint}. "
                            "Check its data_root, ann_file and data_prefix, and that the annotation "
                            "file lists images with annotations.")
    return sizes
