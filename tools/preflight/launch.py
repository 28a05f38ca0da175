"""The start of a tool's run: mmengine's launcher options, the config, mmcv's compiled ops, and the runner."""
import os
import os.path as osp
import sys
from typing import Any, Optional, Sequence

from .datasets import check_built_datasets

__all__ = ["parse_with_launcher", "load_cfg", "mmcv_ops_problem", "error_exit", "build_runner"]


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


def error_exit(err: object) -> int:
    """Print ``ERROR: err`` to stderr, one line and no traceback; return 2, the tools' exit status for it."""
    print(f"ERROR: {err}", file=sys.stderr)
    return 2


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
