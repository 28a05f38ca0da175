"""The plan as text: fixed costs, predictions per batch and setting, and per card the command to train with."""
from __future__ import annotations

import os
from typing import List, Sequence

from .predict import ALLOWANCE_TEXT, BATCHES, CONTEXT_GIB, FRAGMENTATION, GIB, Plan

__all__ = ["render_plan", "train_command", "TRAIN_SCRIPT"]

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
"""``tools/train.py`` of the checkout this planner runs from."""


def train_command(config: str, scope: str, options: str, script: str = TRAIN_SCRIPT) -> str:
    """The command that trains ``config`` with ``options`` (``--cfg-options`` and flags), runnable from the cwd.

    The checkout's ``tools/train.py`` as a path from the current directory (absolute when it lies
    outside it); where there is none, OpenMMLab's ``mim train mmdet|mmseg`` (the configs import
    ``revbifpn_mm`` themselves).
    """
    if not os.path.isfile(script):
        return f"mim train {scope} {config} {options}"
    rel = os.path.relpath(script)
    return f"python {rel if not rel.startswith(os.pardir) else script} {config} {options}"


def render_plan(plan: Plan, gpu_gib: Sequence[float] = (24.0,), batches: Sequence[int] = BATCHES,
                context_gib: float = CONTEXT_GIB, fragmentation: float = FRAGMENTATION) -> str:
    """The plan as text: fixed costs, predictions, and per card the batch and setting to train with."""
    lines = _predictions(plan, batches, context_gib, fragmentation)
    for gib in gpu_gib:
        lines += _card(plan, gib, context_gib, fragmentation)
    return "\n".join(lines + [f"not measured here: {what}" for what in plan.not_measured])


def _predictions(plan: Plan, batches: Sequence[int], context_gib: float, fragmentation: float) -> List[str]:
    precision = "fp32" if not plan.amp else "autocast float16" if plan.device != "cpu" else (
        "autocast bfloat16 on CPU (assumed to take the same activation bytes as CUDA float16 autocast: an assumption)")
    lines = [f"config: {plan.config} ({plan.scope}); its batch per device: {plan.batch}",
             f"input: {plan.shape[0]}x{plan.shape[1]} per sample ({plan.shape_source}); "
             f"precision: {precision}; measured on {plan.device}"]
    rev = plan.reversible
    if rev is not None:
        p = rev.probes[0]
        lines.append(f"fixed costs: parameters + buffers {(p.params_bytes + p.buffers_bytes) / GIB:.3f} GiB, "
                     f"gradients {p.grads_bytes / GIB:.3f} GiB, optimizer state ({p.optimizer}) "
                     f"{p.optim_bytes / GIB:.3f} GiB")
    lines.append("allowance: " + ALLOWANCE_TEXT.format(ctx=context_gib, frag=fragmentation))
    lines += [f"predicted GPU memory, GiB: {'setting':<18} " + " ".join(f"{'b=' + str(b):>7}" for b in batches)]
    rows = [(m.mode, m, 0.0) for m in plan.modes if m.measured]
    if rev is not None:
        rows += [(f"plain_segments={k}", rev, s["kept"]) for k, s in sorted(plan.plain_segments.items()) if k]
    for name, m, kept in rows:
        lines.append(f"{'':<27}{name:<18} " + " ".join(
            f"{m.on_gpu(b, kept, context_gib, fragmentation, plan.assign_on_cpu) / GIB:>7.2f}" for b in batches))
    if plan.plain_segments:
        lines.append("step time at batch 1 on the measuring device, by plain_segments: " + ", ".join(
            f"{k}: {s['step_s']:.2f} s" for k, s in sorted(plan.plain_segments.items()))
            + ("" if plan.time_falls else "  (keeping more did not measure faster everywhere: the fastest fitting "
                                          "setting is recommended)"))
    return lines + _ground_truth_lines(plan, context_gib, fragmentation)


def _card(plan: Plan, gib: float, context_gib: float, fragmentation: float) -> List[str]:
    """A card of ``gib``: the largest fully reversible batch, and the setting to train with at the config's batch."""
    lines = [f"{gib:g} GiB card:"]
    rev = plan.reversible
    if rev is None:
        return lines + ["  no fully reversible measurement: nothing to predict from"]
    card = gib * GIB
    top = rev.largest_batch(card, 0.0, context_gib, fragmentation, assign_on_cpu=plan.assign_on_cpu)
    scale = " --auto-scale-lr" if plan.auto_scale_lr else ""
    lines.append(f"  fully reversible, largest batch {top}" + (
        ": " + train_command(plan.config, plan.scope, f"--cfg-options train_dataloader.batch_size={top}{scale}")
        if top else ": does not fit (not even batch 1)"))
    thr = None if plan.assign_on_cpu else plan.suggested_assign_thr()
    top_thr = rev.largest_batch(card, 0.0, context_gib, fragmentation, assign_on_cpu=True) if thr else 0
    if top_thr > top:
        lines.append(f"  with model.train_cfg.rpn.assigner.gpu_assign_thr={thr}: largest batch {top_thr}")
    if plan.plain_segments:
        k = plan.best_plain_segments(card, plan.batch, context_gib, fragmentation)
        if k:
            pred = rev.on_gpu(plan.batch, plan.plain_segments[k]["kept"], context_gib, fragmentation,
                              plan.assign_on_cpu) / GIB
            why = "keeps the most activations that fit" if plan.time_falls else "is the fastest setting that fits"
            lines.append(f"  at the config's batch {plan.batch}: plain_segments={k} {why} ({pred:.2f} GiB predicted): "
                         + train_command(plan.config, plan.scope, f"--cfg-options model.backbone.plain_segments={k}"))
        elif k == 0:
            lines.append(f"  at the config's batch {plan.batch}: only fully reversible fits")
    return lines


def _ground_truth_lines(plan: Plan, context_gib: float, fragmentation: float) -> List[str]:
    """Detectors: the instances measured with, the ground truth's share, and what ``gpu_assign_thr`` would change."""
    if not plan.instances:
        return []
    lines = [f"ground truth: {plan.instances} instances per image ({plan.instances_source})"]
    rev, gt = plan.reversible, plan.gt_bytes
    if rev is None or gt is None:
        return lines
    one = plan.one_instance
    lines.append(f"  at batch 1 the forward + backward working set is {rev.probes[0].fwd_bwd_bytes / GIB:.3f} GiB: "
                 f"{one.fwd_bwd_bytes / GIB:.3f} GiB with 1 instance (backbone, neck, heads) and {gt / GIB:.3f} GiB "
                 f"for the ground truth, its masks and the anchor assignment of {plan.instances} instances")
    p = rev.probes[0]
    if p.assign_peak_bytes is None:
        return lines
    thr, where = plan.suggested_assign_thr(), "on the CPU (the config's gpu_assign_thr)" if plan.assign_on_cpu else ""
    lines.append(f"  the anchor assignment (MaxIoUAssigner) peaks at {p.assign_peak_bytes / GIB:.3f} GiB, "
                 f"the rest of the step at {p.outside_assign_bytes / GIB:.3f} GiB {where}".rstrip())
    if plan.assign_on_cpu or thr is None:
        lines.append("  train_cfg.rpn.assigner.gpu_assign_thr: " + (
            "already moves this assignment to the CPU" if plan.assign_on_cpu else
            "would not help: the step's peak lies outside the assignment"))
        return lines
    gain = [(rev.on_gpu(b, 0.0, context_gib, fragmentation) - rev.on_gpu(b, 0.0, context_gib, fragmentation, True))
            / GIB for b in (1, 2)]
    lines.append(f"  with train_cfg.rpn.assigner.gpu_assign_thr={thr} (images with more boxes are assigned on the "
                 f"CPU, slower) the prediction falls by {gain[0]:.2f} GiB at batch 1 and {gain[1]:.2f} GiB at "
                 f"batch 2: add --cfg-options model.train_cfg.rpn.assigner.gpu_assign_thr={thr}")
    return lines

