"""Train an MMDetection or MMSegmentation model with a RevBiFPN backbone.

Usage (the same command line as mmdet's / mmseg's tools/train.py)::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--auto-scale-lr] [--auto-batch GIB|auto [--instances N]]
                          [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

The codebase is chosen by the config's ``default_scope`` ('mmdet' or 'mmseg'). A config
whose data root is ``.../synthetic_coco`` gets the synthetic dataset generated when it
is absent; a missing COCO / ADE20K dataset stops with a message that says where to put it.
Multi-GPU: ``bash tools/dist_train.sh CONFIG GPUS [args]``. ``--auto-batch``: docs/planner.md.
"""
import argparse
import sys

import revbifpn_mm  # noqa: F401  (registers RevBiFPN / RevBiFPNNeck; torch.load compat)


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description="Train a detector / segmentor with a RevBiFPN backbone")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument("--amp", action="store_true", default=False,
                        help="enable automatic mixed precision training (needs a GPU)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the learning rate linearly with the total batch size (auto_scale_lr)")
    parser.add_argument("--auto-batch", metavar="GIB|auto", default=None,
                        help="set the batch per GPU to the largest that fits this much GPU memory fully reversible "
                             "(GiB, or 'auto': this GPU's), measured by the memory planner and cached; scales the "
                             "learning rate as --auto-scale-lr")
    parser.add_argument("--instances", type=int, default=None, metavar="N",
                        help="with --auto-batch: ground-truth instances per image to plan for (default: the most "
                             "of any training image, read from the annotations)")
    parser.add_argument("--resume", nargs="?", type=str, const="auto",
                        help="resume from the given checkpoint, or, without a value, from the latest "
                             "checkpoint in the work dir (the newest complete one, with a warning, when "
                             "the latest was cut short)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings of the config, key=value (e.g. "
                             "train_dataloader.dataset.data_root=/data/coco/)")
    from preflight import parse_with_launcher
    return parse_with_launcher(parser, argv)


def build_cfg(args):
    """The config with the command-line options applied."""
    from preflight import load_cfg

    cfg = load_cfg(args)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper does not run on the CPU); "
                             "drop --amp for CPU training")
        optim_wrapper = cfg.optim_wrapper.get("type", "OptimWrapper")
        if optim_wrapper == "AmpOptimWrapper":
            print("AMP training is already enabled in the config.")
        elif optim_wrapper != "OptimWrapper":
            raise SystemExit(f"--amp is only supported with optim_wrapper type 'OptimWrapper', got {optim_wrapper!r}")
        else:
            cfg.optim_wrapper.update(type="AmpOptimWrapper", loss_scale="dynamic")

    if args.auto_scale_lr:
        if not all(key in cfg.get("auto_scale_lr", {}) for key in ("enable", "base_batch_size")):
            raise SystemExit('--auto-scale-lr needs `auto_scale_lr = dict(enable=False, base_batch_size=N)` '
                             "in the config")
        cfg.auto_scale_lr.enable = True

    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == "auto" else args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    from cpu_dist import prepare_cpu_distributed, shutdown_distributed
    from preflight import (DataError, build_runner, check_data, check_pretrained, ensure_synthetic_data, error_exit,
                           mmcv_ops_problem, register_scope, resume_checkpoint)

    if problem := mmcv_ops_problem():  # Faster/Mask R-CNN need mmcv's compiled ops: one clear line, no trace
        return error_exit(problem)
    cfg = build_cfg(args)
    scope = register_scope(cfg)
    prepare_cpu_distributed(cfg, cfg.launcher)
    splits = ["train"] + (["val"] if cfg.get("val_cfg") and cfg.get("val_dataloader") else [])
    for root in ensure_synthetic_data(cfg, splits):
        print(f"generated the synthetic dataset in {root}")
    try:
        check_data(cfg, splits, scope)
        if args.auto_batch is not None:
            from auto_batch import AutoBatchError, apply_auto_batch
            try:
                apply_auto_batch(args, cfg, log=lambda msg: print(msg, flush=True))
            except AutoBatchError as err:
                return error_exit(f"--auto-batch: {err}")
        check_pretrained(cfg)  # the runner initialises the backbone even before load_from / resume
        if args.resume is not None:
            path, warning = resume_checkpoint(cfg.work_dir, None if args.resume == "auto" else args.resume)
            if warning:
                print(f"WARNING: {warning}", file=sys.stderr)
            cfg.load_from = path
        runner = build_runner(cfg, splits)
    except (DataError, FileNotFoundError) as err:
        return error_exit(err)
    done = False
    try:
        runner.train()
        done = True
    finally:  # also when training raises: a live process group at exit can abort the interpreter
        del runner  # it holds the process group (DDP): the group and its threads must go before exit
        shutdown_distributed(barrier=done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
