"""Long-run check: reversible vs plain-autograd training loss curves (issue: reliability).

Trains the quickstart Faster R-CNN (RevBiFPN-S0) on the generated dataset three times
from the same start with deterministic settings (no augmentation, unshuffled data,
PseudoSamplers, no stochastic depth): reversible, plain, and plain with float32 residual
streams (a run that differs from plain only in round-off, the yardstick). Prints the
relative loss divergence and the mean loss over windows of the run.

    python tools/compare_curves.py --iters 300 --work-dir work_dirs/curves
"""
import argparse
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_test_helpers():
    spec = importlib.util.spec_from_file_location(
        "curves_helpers", os.path.join(ROOT, "tests", "mm", "test_resume_and_curves.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--work-dir", default="work_dirs/curves")
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()
    import pathlib

    from revbifpn_mm.tooling.synthetic import generate_synthetic_coco
    h = _load_test_helpers()
    work = pathlib.Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "synthetic_coco"
    generate_synthetic_coco(str(data), num_train=args.images, num_val=2, image_size=(128, 128), seed=5)
    curves = {}
    for name, mode, stream in (("rev", "reversible", "auto"), ("plain", "plain", "auto"),
                               ("plain32", "plain", "float32")):
        cfg = h._cfg(work, name, str(data) + "/", iters=args.iters, ckpt=args.iters, mode=mode, stream=stream)
        print(f"training {name} ({args.iters} iterations) ...", flush=True)
        h._train(cfg, str(work / name))
        curves[name] = h._losses(str(work / name))
    plain = curves["plain"]
    res = {}
    for name in ("rev", "plain32"):
        c = curves[name]
        res[name] = max(abs(c[i] - plain[i]) / abs(plain[i]) for i in plain)
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
