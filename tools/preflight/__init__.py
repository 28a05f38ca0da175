"""What ``tools/train.py``, ``tools/test.py`` and ``tools/quickstart.py`` check and prepare before they build
the runner, for MMDetection and MMSegmentation configs alike (``default_scope`` selects the codebase): launcher
options, config, mmcv's ops and the runner (:mod:`.launch`), the datasets, the synthetic one and the data checks
(:mod:`.datasets`), the pretrained and resume checkpoints (:mod:`.checkpoints`); the distributed start and stop
are :mod:`cpu_dist`'s. Reports through return values and exceptions (:class:`DataError`); the scripts print
(:func:`error_exit`). mmengine is imported lazily.
"""
from revbifpn_mm.mm.compat import register_scope

from .checkpoints import check_pretrained, loadable, resume_checkpoint
from .datasets import (DataError, check_built_datasets, check_data, data_help, data_path, dataset_cfgs,
                       ensure_synthetic_data, leaf_datasets)
from .launch import build_runner, error_exit, load_cfg, mmcv_ops_problem, parse_with_launcher

__all__ = ["DataError", "register_scope", "dataset_cfgs", "ensure_synthetic_data", "check_data", "check_pretrained",
           "check_built_datasets", "data_help", "parse_with_launcher", "mmcv_ops_problem", "error_exit", "loadable",
           "resume_checkpoint", "load_cfg", "build_runner", "leaf_datasets", "data_path"]
