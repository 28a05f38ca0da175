"""Quickstart: train and evaluate RevBiFPN detectors on a generated dataset, on the CPU, in minutes.

    python tools/quickstart.py                # Faster R-CNN, then Mask R-CNN
    python tools/quickstart.py --skip-mask    # Faster R-CNN only
    python tools/quickstart.py --seg          # ... then also the MMSegmentation FCN (mIoU)
    python tools/quickstart.py --tasks seg    # only the segmentation quickstart

Writes the synthetic shapes dataset (tools/synthetic_data.py) unless present, trains and evaluates each
task's configs/quickstart/ config (RevBiFPN-S0, random init), draws its predictions on the first validation
images and prints a summary with the commands to go further: docs/demo.md.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

import revbifpn_mm  # noqa: F401  (registers RevBiFPN / RevBiFPNNeck; torch.load compat)

DEFAULT_DATA_ROOT = "data/synthetic_coco"
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICKSTART = osp.join(REPO, "configs", "quickstart")
TASKS = {  # task: (config, run name, label in the summary), in the order they run
    "faster": (osp.join(QUICKSTART, "faster_rcnn_revbifpn_s0_synthetic.py"), "faster_rcnn_revbifpn_s0", "Faster R-CNN"),
    "mask": (osp.join(QUICKSTART, "mask_rcnn_revbifpn_s0_synthetic.py"), "mask_rcnn_revbifpn_s0", "Mask R-CNN"),
    "seg": (osp.join(QUICKSTART, "fcn_revbifpn_s0_synthetic_seg.py"), "fcn_revbifpn_s0", "FCN (mmseg)"),
}
METRIC_KEYS = ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50", "mIoU", "aAcc", "mAcc")


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="work_dirs/quickstart",
                        help="root of the work dirs (logs, checkpoints); default work_dirs/quickstart")
    parser.add_argument("--iters", type=int, default=None,
                        help="training iterations of each model (default: the configs' max_iters)")
    parser.add_argument("--skip-mask", action="store_true", help="train only Faster R-CNN")
    parser.add_argument("--seg", action="store_true",
                        help="also train + evaluate (mIoU) the MMSegmentation FCN quickstart")
    parser.add_argument("--tasks", default=None,
                        help="comma list of faster, mask, seg to run instead (default faster,mask)")
    parser.add_argument("--num-pictures", type=int, default=4,
                        help="validation images to draw predictions on, per model (0: none)")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT,
                        help="where the synthetic dataset is (generated when absent)")
    parser.add_argument("--num-train", type=int, default=200, help="training images to generate")
    parser.add_argument("--num-val", type=int, default=50, help="validation images to generate")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: half the CPU cores, at most 4; on a small "
                             "shared CPU, more threads than free cores make OpenMP spin and run slower)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the training runs")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="extra overrides applied to both configs (key=value)")
    return parser.parse_args(argv)


def set_iters(cfg, iters):
    """Set the iteration budget: loop length, one validation at the end, LR schedule, checkpoint.

    The quickstart schedules are a linear warm-up followed by one decay scheduler that
    ends at ``max_iters``; the warm-up keeps its length but takes at most a fifth of the run.
    """
    if iters < 1:
        raise SystemExit(f"--iters must be >= 1, got {iters}")
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters
    scheds = cfg.param_scheduler if isinstance(cfg.param_scheduler, list) else [cfg.param_scheduler]
    decay = scheds[-1]
    decay.begin = 0
    if len(scheds) > 1:  # the warm-up, then the decay from its end
        scheds[0].end = decay.begin = max(1, min(scheds[0].end, iters // 5))
    decay.end = max(iters, decay.begin + 1)
    if "T_max" in decay:
        decay.T_max = decay.end - decay.begin


def data_options(task, root, splits=("train", "val", "test")):
    """The config options (key: value) that point a quickstart config's ``splits`` at the dataset under ``root``."""
    opts = {f"{split}_dataloader.dataset.data_root": root for split in splits}
    if task != "seg":  # CocoMetric reads the annotations; mmseg's IoUMetric the label maps
        opts.update({f"{split}_evaluator.ann_file": root + "annotations/instances_val.json"
                     for split in splits if split != "train"})
    return opts


def run_one(task, args):
    """Train one quickstart config; return its metrics, train seconds, checkpoint and pictures drawn."""
    from mmengine.config import Config
    from preflight import build_runner, check_data, register_scope

    config, name, _ = TASKS[task]
    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    root = args.data_root.rstrip("/") + "/"
    cfg.merge_from_dict(data_options(task, root))
    if args.iters is not None:
        set_iters(cfg, args.iters)
    cfg.work_dir = osp.join(args.work_dir, name)
    cfg.randomness = dict(seed=args.seed)
    register_scope(cfg)
    check_data(cfg, ("train", "val"))
    runner = build_runner(cfg, ("train", "val"))
    iters = cfg.train_cfg.max_iters
    print(f"[quickstart] training {name} for {iters} iterations "
          f"(batch {cfg.train_dataloader.batch_size}, log: {cfg.work_dir})", flush=True)
    start = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - start
    hub = runner.message_hub
    metrics = {key.split("/")[-1]: float(hub.get_scalar(f"val/{key}").current())
               for key in METRIC_KEYS if f"val/{key}" in hub.log_scalars}
    ckpt = osp.join(cfg.work_dir, f"iter_{iters}.pth")
    pictures = draw(task, ckpt, args, root, osp.join(cfg.work_dir, "predictions")) if args.num_pictures else []
    return dict(metrics=metrics, seconds=seconds, checkpoint=ckpt, pictures=pictures)


def draw(task, ckpt, args, root, out_dir):
    """The codebase's visualization hook draws the first ``--num-pictures`` validation images (ground
    truth beside the prediction), through ``tools/test.py --show-dir`` as a user would run it."""
    import torch

    opts = [f"{k}={v}" for k, v in data_options(task, root).items()]
    opts.append(f"test_dataloader.dataset.indices={args.num_pictures}")
    cmd = [sys.executable, osp.join(REPO, "tools", "test.py"), TASKS[task][0], ckpt, "--work-dir", out_dir,
           "--show-dir", "vis", "--cfg-options", *opts]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"drawing the predictions failed: {(proc.stdout + proc.stderr)[-3000:]}")
    return sorted(p for ext in ("jpg", "png") for p in glob.glob(osp.join(out_dir, "**", f"*.{ext}"), recursive=True))


def select_tasks(args):
    """The quickstart runs to do, in order, from --tasks / --skip-mask / --seg."""
    if args.tasks:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        bad = [t for t in names if t not in TASKS]
        if bad or not names:
            raise SystemExit(f"--tasks: unknown task(s) {bad or args.tasks!r}; choose from {', '.join(TASKS)}")
    else:
        names = ["faster"] + ([] if args.skip_mask else ["mask"])
    return [n for n in TASKS if n in names or (n == "seg" and args.seg)]


def describe(name, metrics):
    """One summary line of a run's metrics."""
    nan = float("nan")
    if name == "seg":
        return f"mIoU {metrics.get('mIoU', nan):.1f} (aAcc {metrics.get('aAcc', nan):.1f})"
    line = f"bbox mAP {metrics.get('bbox_mAP', nan):.3f} (AP50 {metrics.get('bbox_mAP_50', nan):.3f})"
    if "segm_mAP" in metrics:
        line += f"  segm mAP {metrics['segm_mAP']:.3f}"
    return line


def main(argv=None):
    args = parse_args(argv)
    import torch

    from preflight import DataError, error_exit, mmcv_ops_problem
    from synthetic_data import generate_synthetic_coco

    if problem := mmcv_ops_problem():  # Faster/Mask R-CNN need mmcv's compiled ops: one clear line, no trace
        return error_exit(problem)
    threads = args.threads or min(4, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(max(1, threads))
    torch.set_flush_denormal(True)  # denormal gradients slow small CPU models down a lot
    total = time.perf_counter()
    info = generate_synthetic_coco(args.data_root, num_train=args.num_train, num_val=args.num_val)
    state = "reused" if info["cached"] else "generated"
    print(f"[quickstart] dataset {state}: {info['root']} ({info['num_images']['train']} train / "
          f"{info['num_images']['val']} val images, classes {', '.join(info['classes'])})", flush=True)

    results = {}
    for name in select_tasks(args):
        try:
            results[name] = run = run_one(name, args)
        except DataError as err:
            return error_exit(err)
        print(f"[quickstart] {TASKS[name][2]} done in {run['seconds']:.0f}s: {describe(name, run['metrics'])}",
              flush=True)
        for path in run["pictures"]:
            print(f"[quickstart] predictions drawn: {path}", flush=True)

    write_summary(args, info, results, time.perf_counter() - total)
    print_next_steps(args, results)
    return 0


def write_summary(args, info, results, total):
    """Print the summary of the runs and write it to ``WORK_DIR/summary.json``."""
    import torch

    print("\n==================== RevBiFPN quickstart summary ====================")
    print(f"dataset: {info['root']} (synthetic shapes, {info['num_images']['val']} val images)")
    for name, run in results.items():
        pictures = run["pictures"]
        print(f"{TASKS[name][2]:<13} RevBiFPN-S0  {describe(name, run['metrics'])}  "
              f"train+eval {run['seconds'] / 60:.1f} min")
        print(f"{'':<13} checkpoint {run['checkpoint']}")
        if pictures:
            print(f"{'':<13} predictions {osp.dirname(pictures[0])}/ ({len(pictures)} pictures drawn by the "
                  "visualization hook: ground truth left, prediction right)")
    print(f"total wall time: {total / 60:.1f} min (torch threads: {torch.get_num_threads()})")
    os.makedirs(args.work_dir, exist_ok=True)
    with open(osp.join(args.work_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(dict(results, total_seconds=total), f, indent=2)


def print_next_steps(args, results):
    """The commands to run next: draw every prediction, the other task, COCO."""
    first = next(iter(results))
    extra = ""
    if osp.normpath(args.data_root) != osp.normpath(DEFAULT_DATA_ROOT):
        opts = data_options(first, args.data_root.rstrip("/") + "/", ("test",))
        extra = " --cfg-options " + " ".join(f"{k}={v}" for k, v in opts.items())
    print(f"next: python tools/test.py {osp.relpath(TASKS[first][0])} {results[first]['checkpoint']} "
          f"--show-dir vis{extra}   # draws all predictions")
    if "seg" not in results:
        print("      python tools/quickstart.py --tasks seg   # the MMSegmentation quickstart (mIoU)")
    print("      python tools/train.py configs/faster_rcnn_revbifpn_s4.py   # COCO (see the README)")


if __name__ == "__main__":
    sys.exit(main())
