"""Measuring one training step: peak memory, bytes saved for backward, step time, kernel count.

A :class:`Case` builds one model; :func:`peak_pass` measures cases one after the other (memory, kernels);
:func:`time_pass` builds them all, then times them in turn without a probe; :func:`merge_rows` joins the two.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from meters import KernelCounter, PeakProbe
from revbifpn_mm.core import saved_bytes

logger = logging.getLogger(__name__)

__all__ = ["training_loss", "count_step_kernels", "timed", "measure_step", "interleaved_min_times",
           "AMP_DTYPES", "Case", "measure_case", "peak_pass", "time_pass", "merge_rows"]

AMP_DTYPES: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_loss(outs: Any) -> torch.Tensor:
    """A float32 scalar to call ``backward`` on: the sum of an mmdet/mmseg loss dict's ``*loss*``
    entries (lists included), or of ``mean(o ** 2)`` over a tensor or a sequence of tensors."""
    if isinstance(outs, dict):
        terms = []
        for key, val in outs.items():
            if "loss" in key:
                terms.extend(val if isinstance(val, (list, tuple)) else [val])
        if not terms:
            raise ValueError(f"loss dict has no entry named '*loss*' (keys: {sorted(outs)})")
        return sum(t.float().sum() for t in terms)
    if isinstance(outs, torch.Tensor):
        outs = [outs]
    return sum(o.float().pow(2).mean() for o in outs)


def count_step_kernels(forward: Callable[[], Any]) -> Tuple[int, int]:
    """Non-view aten ops dispatched by ``forward()`` and by the backward of its :func:`training_loss`."""
    with KernelCounter() as fwd:
        loss = training_loss(forward())
    with KernelCounter() as bwd:
        loss.backward()
    return fwd.total, bwd.total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds ``fn()`` takes, the device synchronized before and after."""
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def _autocast(run: Callable[[], Any], device: torch.device, amp: str) -> Callable[[], Any]:
    """``run`` under autocast to ``amp``'s dtype (plain for ``'fp32'``)."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)(run)


def measure_step(run: Callable[[], Any], params: Sequence[nn.Parameter], device: torch.device,
                 amp: str = "fp32", warmup: int = 1, steps: int = 1, probe: Optional[PeakProbe] = None,
                 saved: bool = True, kernels: bool = False) -> Dict[str, float]:
    """Memory, time and kernel figures of the training step ``training_loss(run()).backward()``.

    In order: ``warmup`` steps; the bytes one forward saves for backward (``saved``; ``params``
    excluded); one step between ``probe.reset()`` and ``probe.read()`` (``peak_bytes``);
    ``steps`` timed steps (``step_s``, their median; NaN without any); one step under
    :class:`KernelCounter` (``kernels``, ``kernels_fwd``, ``kernels_bwd``). ``amp`` is
    ``'fp32'``, ``'bf16'`` or ``'fp16'`` (autocast). Gradients are cleared at the end.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if warmup < 0 or steps < 0:
        raise ValueError(f"warmup and steps must be >= 0, got {warmup} and {steps}")
    device = torch.device(device)
    forward = _autocast(run, device, amp)

    def step() -> None:
        training_loss(forward()).backward()

    for _ in range(warmup):
        step()
    res: Dict[str, float] = {}
    if saved:
        res["saved_bytes"] = saved_bytes(forward, exclude=params)
    if probe is not None:
        _sync(device)
        probe.reset()
        step()  # always one step after the reset: the peak is read from it, timed or not
        res["peak_bytes"] = probe.read()
    times = [timed(step, device) for _ in range(steps)]
    res["step_s"] = statistics.median(times) if times else math.nan
    if kernels:
        for p in params:  # as after an optimizer's zero_grad(): no accumulation kernels counted
            p.grad = None
        res["kernels_fwd"], res["kernels_bwd"] = count_step_kernels(forward)
        res["kernels"] = res["kernels_fwd"] + res["kernels_bwd"]
    for p in params:
        p.grad = None
    return res


def interleaved_min_times(steps: Mapping[str, Callable[[], None]], rounds: int = 3,
                          device: Union[str, torch.device] = "cpu",
                          clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """name -> minimum seconds of each step function over ``rounds`` rounds, each round running
    every function once in turn, so that slow drifts of the machine spread over all of them.
    The callers warm each function up first."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    best, dev = {name: math.inf for name in steps}, torch.device(device)
    for _ in range(rounds):
        for name, fn in steps.items():
            best[name] = min(best[name], timed(fn, dev, clock))
    return best


GB = 1e9
_STEP_ERRORS = (RuntimeError, NotImplementedError, TypeError, KeyError, ValueError)
"""What a case may raise while built or stepped and still leave the others measurable (e.g. an
op without a kernel for the autocast dtype, a missing registry entry, out of memory)."""


@dataclass
class Case:
    """One row of a benchmark: ``build()`` returns ``(model, run)``, ``run()`` the forward (or a loss
    dict); ``(name, amp)`` joins the rows of several passes; memory is reported per sample of
    ``batch``; ``info`` is recorded in the row as is."""

    name: str
    group: str
    build: Callable[[], Tuple[nn.Module, Callable[[], Any]]]
    amp: str = "fp32"
    batch: int = 1
    info: Dict[str, Any] = field(default_factory=dict)


def _failed(case: Case, err: BaseException) -> Dict[str, Any]:
    text = str(err).strip().splitlines()
    msg = f"{type(err).__name__}: {text[0] if text else ''}"[:200]
    frames = traceback.extract_tb(err.__traceback__)
    if frames:  # where it was raised, e.g. an mmcv op without a kernel for the dtype
        last = frames[-1]
        where = os.sep.join(last.filename.split(os.sep)[-3:])
        msg += f" (in {last.name}, {where})"
    logger.warning("%s (%s) failed: %s", case.name, case.amp, msg)
    return dict(name=case.name, group=case.group, amp=case.amp, error=msg, **case.info)


def _attempt(case: Case, fn: Callable[[], Any]) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """``(fn(), None)``, or ``(None, error row)`` where building or stepping ``case`` raised.

    After a failure the cyclic collector runs: the traceback of an exception raised mid-step holds the
    partial forward's tensors in reference cycles (else gigabytes stay and skew the next cases' peaks).
    """
    try:
        return fn(), None
    except _STEP_ERRORS as err:  # torch.OutOfMemoryError is a RuntimeError
        failed = _failed(case, err)
    gc.collect()  # here, with the exception and its frames gone
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None, failed


def measure_case(case: Case, device: torch.device, warmup: int = 1, steps: int = 0,
                 probe: Optional[PeakProbe] = None, kernels: bool = False) -> Dict[str, Any]:
    """Build one case, measure it with :func:`measure_step`, free it: a row of its figures per sample
    and ``case.info``, or, where building or stepping raised, its ``error``."""
    logger.info("%s (%s) ...", case.name, case.amp)
    t0 = time.perf_counter()

    def measure() -> Tuple[List[nn.Parameter], Dict[str, float]]:
        model, run = case.build()
        params = list(model.parameters())
        return params, measure_step(run, params, device, case.amp, warmup, steps, probe, kernels=kernels)
    done, failed = _attempt(case, measure)
    if failed:
        return failed
    params, r = done
    row: Dict[str, Any] = dict(name=case.name, group=case.group, amp=case.amp, batch=case.batch,
                               params_m=sum(p.numel() for p in params) / 1e6,
                               saved_gb_per_sample=r["saved_bytes"] / case.batch / GB, step_s=r["step_s"])
    if "peak_bytes" in r:
        row["peak_gb_per_sample"] = r["peak_bytes"] / case.batch / GB
    row.update({k: int(r[k]) for k in ("kernels", "kernels_fwd", "kernels_bwd") if k in r}, **case.info)
    logger.info("  saved %.4f GB/sample%s%s%s (%.0f s)", row["saved_gb_per_sample"],
                f", peak {row['peak_gb_per_sample']:.4f} GB/sample" if "peak_gb_per_sample" in row else "",
                f", step {row['step_s']:.3f} s" if not math.isnan(row["step_s"]) else "",
                f", {row['kernels']} kernels" if "kernels" in row else "", time.perf_counter() - t0)
    return row


def peak_pass(cases: Sequence[Case], device: torch.device, warmup: int = 1, probe: Optional[PeakProbe] = None,
              kernels: bool = True) -> List[Dict[str, Any]]:
    """Each case in turn, built, measured (memory, kernels; no timed steps) and freed."""
    return [measure_case(c, device, warmup, 0, probe, kernels) for c in cases]


def time_pass(cases: Sequence[Case], device: torch.device, rounds: int = 3,
              clock: Callable[[], float] = time.perf_counter) -> List[Dict[str, Any]]:
    """Step times without any probe: every case built and warmed up by one step (its time, compilation
    included: ``first_step_s``), then all timed by
    :func:`interleaved_min_times`; a case whose build or warm-up raises gets an ``error`` row."""
    steps: Dict[str, Callable[[], None]] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    for c in cases:
        key = f"{c.name}|{c.amp}"
        logger.info("build + warm-up %s (%s)", c.name, c.amp)

        def warm_up(c: Case = c) -> Tuple[Callable[[], None], float]:
            model, run = c.build()

            def step(forward: Callable[[], Any] = _autocast(run, device, c.amp)) -> None:
                training_loss(forward()).backward()
                model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step()
            return step, time.perf_counter() - t0  # compilation included, where the case compiles
        done, failed = _attempt(c, warm_up)
        if failed:
            rows[key] = failed
            continue
        steps[key], first = done
        rows[key] = dict(name=c.name, group=c.group, amp=c.amp, batch=c.batch, first_step_s=first, **c.info)
    logger.info("timing %d models, %d interleaved rounds", len(steps), rounds)
    if steps:
        for key, sec in interleaved_min_times(steps, rounds, device, clock).items():
            rows[key]["step_s"] = sec
            logger.info("  %s: %.3f s", key, sec)
    return list(rows.values())


def merge_rows(*passes: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows of several passes joined on ``(name, amp)``, in first-seen order.

    Later passes add their figures; a NaN ``step_s`` (a pass without timed steps) never
    replaces a measured one.
    """
    out: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for rows in passes:
        for r in rows:
            merged = out.setdefault((r["name"], r["amp"]), {})
            for k, v in r.items():
                if k == "step_s" and isinstance(v, float) and math.isnan(v) and k in merged:
                    continue
                merged[k] = v
    return list(out.values())
