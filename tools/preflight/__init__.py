"""Support code of ``tools/train.py``, ``tools/test.py`` and ``tools/quickstart.py``: what they check
and prepare before they build the runner, one job per module.

For MMDetection and MMSegmentation configs alike (the config's ``default_scope`` selects the
codebase): :mod:`.launch` parses mmengine's launcher options, loads the config and checks mmcv's
compiled ops; :mod:`.datasets` walks a config's datasets and generates the embedded synthetic
dataset where a config points at a missing one; :mod:`.data_checks` turns a missing COCO / ADE20K
into one message that says where to put it; :mod:`.checkpoints` checks the pretrained checkpoint
and makes the resume choice; :mod:`.runner` builds the runner and checks its built datasets (the
distributed start and stop are :mod:`cpu_dist`'s). Reports through return values and exceptions
(:class:`DataError`); the scripts print. mmengine is imported lazily.
"""
from revbifpn_mm.mm.compat import register_scope

from .checkpoints import check_pretrained, loadable, resume_checkpoint
from .data_checks import check_data, data_help
from .datasets import SYNTHETIC_ROOT, DataError, dataset_cfgs, ensure_synthetic_data, leaf_datasets
from .launch import load_cfg, mmcv_ops_problem, parse_with_launcher
from .runner import build_runner, check_built_datasets

__all__ = ["DataError", "SYNTHETIC_ROOT", "register_scope", "dataset_cfgs", "ensure_synthetic_data", "check_data",
           "check_pretrained", "check_built_datasets", "data_help", "parse_with_launcher", "mmcv_ops_problem",
           "loadable", "resume_checkpoint", "load_cfg", "build_runner", "leaf_datasets"]
