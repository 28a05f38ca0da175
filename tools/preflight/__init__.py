"""What ``tools/train.py``, ``tools/test.py`` and ``tools/quickstart.py`` check and prepare before they build
the runner, for MMDetection and MMSegmentation configs alike (``default_scope`` selects the codebase): launcher
options, config and mmcv's ops (:mod:`.launch`), the synthetic dataset (:mod:`.datasets`), the data checks
(:mod:`.data_checks`), the pretrained and resume checkpoints (:mod:`.checkpoints`), the runner (:mod:`.runner`);
the distributed start and stop are :mod:`cpu_dist`'s. Reports through return values and exceptions
(:class:`DataError`); the scripts print. mmengine is imported lazily.
"""
from revbifpn_mm.mm.compat import register_scope

from .checkpoints import check_pretrained, loadable, resume_checkpoint
from .data_checks import check_data, data_help
from .datasets import DataError, data_path, dataset_cfgs, ensure_synthetic_data, leaf_datasets
from .launch import load_cfg, mmcv_ops_problem, parse_with_launcher
from .runner import build_runner, check_built_datasets

__all__ = ["DataError", "register_scope", "dataset_cfgs", "ensure_synthetic_data", "check_data", "check_pretrained",
           "check_built_datasets", "data_help", "parse_with_launcher", "mmcv_ops_problem", "loadable",
           "resume_checkpoint", "load_cfg", "build_runner", "leaf_datasets", "data_path"]
