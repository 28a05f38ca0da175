"""Long-run check: reversible vs plain-autograd training loss curves.

Trains the quickstart Faster R-CNN (RevBiFPN-S0) on the generated dataset three times
from the same start with deterministic settings (no augmentation, unshuffled data,
PseudoSamplers, no stochastic depth): reversible, plain, and plain with float32 residual
streams (a run that differs from plain only in round-off, the yardstick). Prints the
relative loss divergence and the mean loss over windows of the run. Each run uses one
CPU thread (``OMP_NUM_THREADS=1``) so that it is reproducible.

    python tools/compare_curves.py --iters 300 --work-dir work_dirs/curves
    python tools/compare_curves.py --dry-run   # only the dataset and the three configs
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

from curves import curve_config, max_relative_divergence, read_losses
from synthetic_data import generate_synthetic_coco

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
RUNS = (("rev", "reversible", "auto"), ("plain", "plain", "auto"), ("plain32", "plain", "float32"))


def _train(cfg: str, work: str) -> None:
    out = subprocess.run([sys.executable, TRAIN, cfg, "--work-dir", work], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"training {cfg} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--work-dir", default="work_dirs/curves")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--dry-run", action="store_true",
                    help="generate the dataset and write the three configs, but do not train")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.images < 1:
        ap.error("--iters and --images must be positive")
    work = pathlib.Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "synthetic_coco"
    generate_synthetic_coco(str(data), num_train=args.images, num_val=2, image_size=(128, 128), seed=5)
    cfgs = {}
    for name, mode, stream in RUNS:
        cfgs[name] = work / f"{name}.py"
        cfgs[name].write_text(curve_config(str(data) + "/", iters=args.iters, ckpt=args.iters, mode=mode,
                                           stream=stream))
    if args.dry_run:
        print("configs: " + " ".join(str(c) for c in cfgs.values()))
        return 0
    curves = {}
    for name, _mode, _stream in RUNS:
        print(f"training {name} ({args.iters} iterations) ...", flush=True)
        _train(str(cfgs[name]), str(work / name))
        curves[name] = read_losses(str(work / name))
    plain = curves["plain"]
    res = {name: max_relative_divergence(curves[name], plain) for name in ("rev", "plain32")}
    print(f"max relative loss divergence vs plain over {args.iters} iterations: "
          f"reversible {res['rev']:.3e}, plain with float32 streams {res['plain32']:.3e}")
    step = max(1, args.iters // 6)
    print("| iterations | plain | reversible | plain (fp32 streams) |\n|---|---|---|---|")
    for a in range(1, args.iters + 1, step):
        b = min(a + step - 1, args.iters)
        m = {n: sum(curves[n][i] for i in range(a, b + 1)) / (b - a + 1) for n in curves}
        print(f"| {a}-{b} | {m['plain']:.4f} | {m['rev']:.4f} | {m['plain32']:.4f} |")
    with open(work / "curves.json", "w") as f:
        json.dump(curves, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
