"""Evaluate a trained MMDetection / MMSegmentation model with a RevBiFPN backbone.

Usage (the command line of mmdet's / mmseg's tools/test.py)::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE_OR_DIR]
                         [--show-dir DIR] [--show] [--tta] [--cfg-options k=v ...]
                         [--launcher none|pytorch|slurm|mpi]

``--out`` and ``--show-dir`` differ between mmdet and mmseg configs (see ``--help``).
Multi-GPU: ``bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [args]``.
"""
import argparse
import os.path as osp
import sys

import revbifpn_mm  # noqa: F401  (registers RevBiFPN / RevBiFPNNeck; torch.load compat)


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description="Test (and evaluate) a model with a RevBiFPN backbone")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="the directory to save the file containing evaluation metrics")
    parser.add_argument("--out", type=str,
                        help="mmdet: dump predictions to this pickle file (.pkl) for offline evaluation; "
                             "mmseg: directory for the predicted label maps")
    parser.add_argument("--show", action="store_true", help="show prediction results in a window")
    parser.add_argument("--show-dir",
                        help="directory where painted images are saved: mmdet WORK_DIR/TIMESTAMP/SHOW_DIR, "
                             "mmseg WORK_DIR/SHOW_DIR/vis_data/vis_image")
    parser.add_argument("--wait-time", type=float, default=2, help="the interval of show (s)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: the config's tta_model / tta_pipeline (mmseg configs have "
                             "them; for mmdet configs without them, horizontal flip merged by DetTTAModel)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings of the config, key=value")
    from preflight import parse_with_launcher
    return parse_with_launcher(parser, argv)


def trigger_visualization_hook(cfg, args, scope):
    """Turn on drawing in the config's visualization hook (``--show`` / ``--show-dir``), in place."""
    default_hooks = cfg.default_hooks
    if "visualization" not in default_hooks:
        raise SystemExit("--show / --show-dir need a 'visualization' hook in default_hooks "
                         "(DetVisualizationHook / SegVisualizationHook)")
    hook = default_hooks["visualization"]
    hook["draw"] = True
    if args.show:
        hook.update(show=True, wait_time=args.wait_time)
    if args.show_dir:
        if scope == "mmseg":  # SegVisualizationHook draws through the visualizer's save_dir
            cfg.visualizer["save_dir"] = osp.join(cfg.work_dir, args.show_dir)
            hook["interval"] = 1  # every test image, as mmdet's hook does with test_out_dir
        else:
            hook["test_out_dir"] = args.show_dir


def use_tta(cfg, scope):
    """Wrap the model in the config's test-time-augmentation model and test with its pipeline, in place.

    mmdet configs that define neither get mmdet's DetTTAModel (NMS 0.5, 100 boxes) over the test
    pipeline with each image seen as it is and flipped horizontally.
    """
    from copy import deepcopy

    from mmengine.config import ConfigDict
    if scope == "mmdet":
        cfg.setdefault("tta_model", dict(type="DetTTAModel",
                                         tta_cfg=dict(nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)))
        if "tta_pipeline" not in cfg:
            from preflight import leaf_datasets
            _, data = next(leaf_datasets(cfg.test_dataloader.dataset))
            pipeline = deepcopy(data.pipeline)
            pack = pipeline.pop()
            pack.setdefault("meta_keys", ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))
            pack.meta_keys = tuple(pack.meta_keys) + ("flip", "flip_direction")
            cfg.tta_pipeline = pipeline + [dict(type="TestTimeAug", transforms=[
                [dict(type="RandomFlip", prob=1.0), dict(type="RandomFlip", prob=0.0)], [pack]])]
    if "tta_model" not in cfg or "tta_pipeline" not in cfg:
        raise SystemExit("--tta needs tta_model and tta_pipeline in the config (mmseg's base configs define them)")
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def build_cfg(args):
    """The config with the command-line options applied, and its codebase's scope (registered)."""
    from preflight import load_cfg, register_scope

    cfg = load_cfg(args)
    scope = register_scope(cfg)
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args, scope)
    if args.tta:
        use_tta(cfg, scope)
    if args.out is not None and scope == "mmseg":
        cfg.test_evaluator.update(output_dir=args.out, keep_results=True)
    elif args.out is not None and not args.out.endswith((".pkl", ".pickle")):
        raise SystemExit(f"--out must be a .pkl or .pickle file for mmdet configs, got {args.out!r}")
    return cfg, scope


def main(argv=None):
    args = parse_args(argv)
    from cpu_dist import prepare_cpu_distributed, shutdown_distributed
    from preflight import (DataError, build_runner, check_data, ensure_synthetic_data, error_exit,
                           mmcv_ops_problem)

    if problem := mmcv_ops_problem():  # Faster/Mask R-CNN need mmcv's compiled ops: one clear line, no trace
        return error_exit(problem)
    cfg, scope = build_cfg(args)
    prepare_cpu_distributed(cfg, cfg.launcher)
    for root in ensure_synthetic_data(cfg, ("test",)):
        print(f"generated the synthetic dataset in {root}")
    try:
        if "://" not in args.checkpoint and not osp.isfile(args.checkpoint):
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint!r}")
        check_data(cfg, ("test",), scope)
        runner = build_runner(cfg, ("test",))
    except (DataError, FileNotFoundError) as err:
        return error_exit(err)

    if args.out is not None and scope == "mmdet":
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))

    metrics, rank = None, runner.rank
    try:
        metrics = runner.test()
    finally:  # also when testing raises: a live process group at exit can abort the interpreter
        del runner  # it holds the process group (DDP): the group and its threads must go before exit
        shutdown_distributed(barrier=metrics is not None)
    if rank == 0:
        shown = "  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items())
        print(f"test metrics: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
