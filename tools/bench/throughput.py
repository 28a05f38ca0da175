"""``throughput``: for a memory cap, the largest batch whose training step fits it and the images per
second at that batch, per backbone + neck: what a user gets from the memory on a given card.

A model is ``NAME[+cp][@OPTIONS]`` (``revbifpn_s3``, ``revbifpn_s3@plain_segments=2``,
``hrnetv2p_w18+cp``): the backbone + neck of its Faster R-CNN config (timm stand-ins and an
HRFPN-equivalent neck without the mm stack). How the cap is applied on CUDA and on CPU:
docs/benchmarks.md, "Throughput at a memory cap".
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from meters import RssPeakProbe, run_fresh
from planner.predict import CONTEXT_GIB

from . import models as M
from .measure import interleaved_min_times, timed, training_loss

GIB = 1 << 30


def add_arguments(ap: argparse.ArgumentParser) -> None:  # noqa: D103
    ap.add_argument("--models", default="revbifpn_s3,revbifpn_s3@plain_segments=2,hrnetv2p_w18,hrnetv2p_w18+cp",
                    help="comma list of NAME[+cp][@OPTIONS] (see the module docstring)")
    ap.add_argument("--caps", default="12,24", help="memory caps in GiB, comma list (cards as nvidia-smi counts them)")
    ap.add_argument("--sizes", default="800x1344,512x1024", help="input sizes HxW, comma list")
    ap.add_argument("--max-batch", type=int, default=64, help="largest batch tried")


def parse_model(spec: str) -> Tuple[str, bool, Dict[str, Any]]:
    """``'revbifpn_s3@plain_segments=2;plain_from=input'`` -> ``('revbifpn_s3', False, {'plain_segments': 2,
    'plain_from': 'input'})``: RevBiFPN options, ints and true / false parsed where they parse."""
    name, _, text = spec.partition("@")
    opts: Dict[str, Any] = {}
    for item in filter(None, text.replace(";", ",").split(",")):
        k, _, v = item.partition("=")
        opts[k] = int(v) if v.lstrip("-").isdigit() else {"true": True, "false": False}.get(v.lower(), v)
    cp = name.endswith("+cp")
    return name[:-3] if cp else name, cp, opts


def build(spec: str) -> torch.nn.Module:
    """The backbone + neck of a model spec, BN frozen as detection trains."""
    name, cp, opts = parse_model(spec)
    return M.freeze_bn(M.backbone_neck_any(name, cp, **opts), True)


def largest_batch(fits: Callable[[int], Optional[Dict[str, Any]]], max_batch: int) -> Tuple[int, Optional[Dict]]:
    """The largest batch ``b <= max_batch`` with ``fits(b)`` (doubling, then bisection), and its result.

    Assumes memory grows with the batch: once a batch fails, larger ones are not tried.
    """
    found: Dict[int, Dict[str, Any]] = {}
    lo, hi, failed = 0, max_batch + 1, False
    while hi - lo > 1:
        b = (lo + hi) // 2 if failed else min(max(1, 2 * lo), hi - 1)
        r = fits(b)
        if r is None:
            hi, failed = b, True
        else:
            found[b], lo = r, b
    return lo, found.get(lo)


# --------------------------------------------------------------------------- CUDA
def _cuda_step(model: torch.nn.Module, batch: int, h: int, w: int, device: torch.device) -> float:
    x = M.image(batch, h, w, device)
    return timed(lambda: training_loss(model(x)).backward(), device)


def cuda_rows(spec: str, cap_gib: float, h: int, w: int, max_batch: int, device: torch.device,
              steps: int = 3) -> Dict[str, Any]:
    """Search and time one model on a CUDA device under a cap (one step per batch tried, cuDNN's
    autotuner off as mmdet trains, so that a batch's memory does not depend on what ran before)."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.backends.cudnn.benchmark = False
    torch.cuda.set_per_process_memory_fraction(max(0.01, min(1.0, (cap_gib - CONTEXT_GIB) * GIB / total)), device)
    model = build(spec).to(device)

    def fits(b: int) -> Optional[Dict[str, Any]]:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            _cuda_step(model, b, h, w, device)
            return dict(allocated_gb=torch.cuda.max_memory_allocated(device) / 1e9,
                        reserved_gb=torch.cuda.max_memory_reserved(device) / 1e9)
        except torch.OutOfMemoryError:
            return None
        finally:
            model.zero_grad(set_to_none=False)
            gc.collect()
            torch.cuda.empty_cache()
    batch, res = largest_batch(fits, max_batch)
    if batch:
        res = dict(res, step_s=min(_cuda_step(model, batch, h, w, device) for _ in range(steps + 1)))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    return dict(batch=batch, **(res or {}))


# --------------------------------------------------------------------------- CPU
def _child(spec: str, batch: int, h: int, w: int, out: str) -> None:
    probe = RssPeakProbe()  # before the model: it pins glibc's mmap threshold
    torch.manual_seed(0)
    model = build(spec)
    x = M.image(batch, h, w, torch.device("cpu"))
    training_loss(model(x)).backward()  # warm-up: gradients allocated and kept, as in training
    probe.reset()
    training_loss(model(x)).backward()
    resident = sum(p.numel() * p.element_size() * (2 if p.requires_grad else 1) for p in model.parameters())
    with open(out, "w", encoding="utf-8") as f:
        json.dump(dict(step_bytes=probe.read(), resident_bytes=resident), f)


def cpu_rows(specs: List[str], cap_gib: float, h: int, w: int, max_batch: int, rounds: int) -> List[Dict[str, Any]]:
    """Search every model with fresh-process probes, then time all at their batches, interleaved."""
    rows = []
    for spec in specs:
        def fits(b: int, spec: str = spec) -> Optional[Dict[str, Any]]:
            try:  # the step's peak resident set in a fresh process (_child)
                r = run_fresh("bench.throughput", [spec, b, h, w], timeout=1800)
            except RuntimeError as err:  # FreshProcessKilled included
                raise RuntimeError(f"the probe of {spec} at batch {b} failed: {str(err)[-1500:]}") from err
            total = r["step_bytes"] + r["resident_bytes"]
            return dict(peak_gb=total / 1e9) if total <= cap_gib * GIB else None
        batch, res = largest_batch(fits, max_batch)
        rows.append(dict(spec=spec, batch=batch, **(res or {})))
    steps = {}
    for r in rows:
        if r["batch"]:
            model, x = build(r["spec"]), M.image(r["batch"], h, w, torch.device("cpu"))

            def step(model=model, x=x) -> None:
                training_loss(model(x)).backward()
                model.zero_grad(set_to_none=False)
            step()
            steps[r["spec"]] = step
    for spec, sec in interleaved_min_times(steps, rounds).items():
        next(r for r in rows if r["spec"] == spec)["step_s"] = sec
    return rows


def rows(args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:  # noqa: D103
    out = []
    specs = [s for s in args.models.split(",") if s]
    for size in args.sizes.split(","):
        h, w = M.parse_size(size)
        for cap in map(float, args.caps.split(",")):
            found = (cpu_rows(specs, cap, h, w, args.max_batch, args.rounds) if device.type == "cpu" else
                     [dict(spec=s, **cuda_rows(s, cap, h, w, args.max_batch, device)) for s in specs])
            for r in found:
                step = r.get("step_s", math.nan)
                out.append(dict(name=f"{r['spec']} cap={cap:g}GiB {h}x{w}", group="throughput", amp="fp32",
                                model=r["spec"], cap_gib=cap, size=[h, w], batch=r["batch"], step_s=step,
                                images_s=r["batch"] / step if r["batch"] and step == step else 0.0,
                                **{k: r[k] for k in ("peak_gb", "allocated_gb", "reserved_gb") if k in r}))
    return out


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
