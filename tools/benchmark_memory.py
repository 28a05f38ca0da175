"""Training memory, step time, kernels and throughput: RevBiFPN against the HRNet and ResNet users train.

    python tools/benchmark_memory.py SUITE [options] --out DIR

Suites (``tools/bench/<suite>.py`` says what each measures; ``SUITE --help`` lists its options):
  backbones   RevBiFPN backbones reversible, plain and at plain_segments settings; mmdet's backbones
  fair-fight  whole Faster / Mask R-CNN and their backbone + neck, baselines with and without with_cp
  seg         whole FCN segmentors (RevBiFPN with FCNHead / LeanFCNHead, HRNetV2 with and without with_cp)
  depth       the S0 width at 2-16 extension layers, reversible and plain
  kernels     aten kernels per training step, reversible vs plain, frozen and training BN
  throughput  the largest batch that fits a memory cap, and images/s at it
  report      only merge DIR/peak.json and DIR/time.json into DIR/benchmark.{json,md,png}

Passes (``--pass``) of the case suites: ``peak`` measures each model in turn with the peak probe on (peak
memory, bytes saved for backward); ``time`` builds them all, then steps them in turn for ``--rounds``
rounds without it (minimum each); on CPU two commands. Memory is per sample; docs/benchmarks.md.

Examples:
    python tools/benchmark_memory.py fair-fight --pass peak --out work_dirs/ff
    python tools/benchmark_memory.py fair-fight --pass time --out work_dirs/ff
    python tools/benchmark_memory.py backbones --archs s3 --plain-segments 1,3,plain --pass time --out work_dirs/bb
    python tools/benchmark_memory.py throughput --caps 3 --sizes 512x512 --out work_dirs/tp
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import sys
from typing import Any, Dict, List, Optional

import torch

from bench import models as M
from bench import report
from bench.measure import peak_pass, time_pass
from meters import peak_probe_for

SUITES = {"backbones": "1x800x1344", "fair-fight": "1x800x1344", "seg": "1x1024x2048", "depth": "1x512x512",
          "kernels": "2x128x128", "throughput": None, "report": None}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="suite", required=True)
    for suite, default_input in SUITES.items():
        p = sub.add_parser(suite, help=f"see tools/bench/{suite.replace('-', '_')}.py")
        p.add_argument("--out", required=True, help="output directory")
        if suite == "report":
            continue
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        if suite != "kernels":  # counts, not times
            p.add_argument("--rounds", type=int, default=3, help="timed rounds (the minimum is kept)")
        if default_input:
            p.add_argument("--input", default=default_input, help=f"BxHxW (default {default_input})")
        if suite not in ("kernels", "throughput"):
            p.add_argument("--pass", dest="passes", default="peak", choices=("peak", "time", "all"))
        importlib.import_module(f"bench.{suite.replace('-', '_')}").add_arguments(p)
    args = ap.parse_args(argv)
    if getattr(args, "input", None):
        try:
            args.input = M.parse_size(args.input, 3)
        except ValueError as err:
            ap.error(f"--input is {err}")
    if getattr(args, "passes", None) == "all" and args.device == "cpu":
        ap.error("on CPU run --pass time and --pass peak as two commands: the peak probe changes glibc's "
                 "allocator for the whole process and would slow the timed steps")
    return args


def meta(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """What a result was measured on."""
    return dict(suite=args.suite, device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                input=list(getattr(args, "input", None) or []) or getattr(args, "sizes", ""),
                date=datetime.date.today().isoformat(),
                command="python tools/benchmark_memory.py " + " ".join(sys.argv[1:]))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[benchmark] %(message)s", stream=sys.stderr)
    if args.suite == "report":
        print(report.report(args.out))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    mod = importlib.import_module(f"bench.{args.suite.replace('-', '_')}")
    info = meta(args, device)
    if hasattr(mod, "rows"):  # kernels, throughput: measured by the suite itself
        report.write_pass(args.out, "peak", info, mod.rows(args, device))
        print(report.report(args.out, info))
        return 0
    if args.suite != "backbones" and not M.have_mm():
        logging.getLogger("benchmark").error("the %s suite needs mmdet / mmseg and mmcv's compiled ops", args.suite)
        return 1
    cases = mod.cases(args, device)
    if args.passes in ("time", "all"):
        report.write_pass(args.out, "time", info, time_pass(cases, device, args.rounds))
    if args.passes in ("peak", "all"):
        probe = peak_probe_for(device)
        for case in cases:  # written row by row: rows measured before a crash (out of memory) stay
            report.write_pass(args.out, "peak", info, peak_pass([case], device, probe=probe, kernels=False))
    print(report.report(args.out, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
