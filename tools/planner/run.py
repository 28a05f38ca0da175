"""The plan of one config: which measurements to take, each in a fresh process, and a rough wall time for them."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .config import NotMeasured, build_model, load_config, training_shape
from .inputs import BOXES_PER_IMAGE, synthetic_batch
from .measure import available_ram_bytes, probe_in_subprocess
from .predict import GIB, ModePlan, Plan

__all__ = ["MODES", "expected_seconds", "make_plan"]

MODES = ("reversible", "plain_segments", "plain")


def expected_seconds(config: str, shape: Tuple[int, int], modes: Sequence[str], cfg_options: Optional[Dict] = None
                     ) -> float:
    """A rough wall time of :func:`make_plan`, from one training step of the model at half the input's
    height and width, scaled by area (a calibration, not a measurement of the plan)."""
    cfg = load_config(config, cfg_options)
    model = build_model(cfg, config)
    small = (max(64, shape[0] // 2 // 32 * 32), max(64, shape[1] // 2 // 32 * 32))
    packed = synthetic_batch(cfg, model, 1, small, "cpu")
    start = time.perf_counter()
    model.parse_losses(model(**model.data_preprocessor(packed, True), mode="loss"))[0].backward()
    step = (time.perf_counter() - start) * shape[0] * shape[1] / (small[0] * small[1])
    segments = model.backbone.rev_stack.max_plain_segments + 1 if hasattr(model.backbone, "rev_stack") else 0
    per_probe = 10.0 + 4 * step  # start-up, warm-up, forward + backward, optimizer step; batch 2 doubles it
    total = 3 * per_probe * len(modes)
    if "plain_segments" in modes:  # one more process on CPU (timed without the peak probe)
        total += segments * 3 * step + per_probe
    return total


def make_plan(config: str, shape: Optional[Tuple[int, int]] = None, amp: bool = False,
              modes: Sequence[str] = MODES, device: str = "cpu", cfg_options: Optional[Dict[str, Any]] = None,
              ram_fraction: float = 0.6, threads: Optional[int] = None, log: Callable[[str], Any] = lambda msg: None,
              instances: int = BOXES_PER_IMAGE, instances_source: str = "assumed", mask_format: str = "bitmap",
              box_sides: Optional[Sequence[Sequence[float]]] = None) -> Plan:
    """Measure the config at batch 1 and 2 (fully reversible; ``'plain_segments'``: every ``plain_segments``
    setting at batch 1 too; ``'plain'``: plain mode at batch 1 and 2), each in a fresh process.

    What does not fit here is reported as not measured, with the reason: the measuring process may
    use at most ``ram_fraction`` of the memory available when it starts (CPU). Detectors are measured
    with ``instances`` boxes per image, of ``box_sides`` (see :func:`probe`).

    Raises:
        PlanError: the config does not load or build, or has no training resolution.
    """
    cfg = load_config(config, cfg_options)
    h, w, how = training_shape(cfg) if shape is None else (int(shape[0]), int(shape[1]), "--shape")
    scale = cfg.get("auto_scale_lr", None)
    rpn = (cfg.model.get("train_cfg") or {}).get("rpn") or {}
    plan = Plan(config=config, scope=cfg.default_scope, shape=(h, w), shape_source=how, amp=amp, device=device,
                batch=int((cfg.get("train_dataloader", {}) or {}).get("batch_size", 1) or 1),
                auto_scale_lr=isinstance(scale, dict) and "base_batch_size" in scale, modes=[],
                instances=instances if cfg.default_scope == "mmdet" else 0, instances_source=instances_source,
                gpu_assign_thr=float((rpn.get("assigner") or {}).get("gpu_assign_thr", -1)))
    run = dict(amp=amp, device=device, cfg_options=cfg_options, threads=threads, instances=instances,
               mask_format=mask_format, box_sides=box_sides)
    for mode in ("reversible", "plain"):
        if mode in modes or mode == "reversible" and "plain_segments" in modes:
            plan.modes.append(_measure_mode(plan, mode, mode == "reversible" and "plain_segments" in modes,
                                            ram_fraction, run, log))
    if device == "cpu":
        plan.not_measured.append("time on a GPU: the step times that choose between plain_segments settings are "
                                 "CPU times here")
    if plan.instances > 1 and plan.reversible is not None:
        log("measuring reversible at batch 1 with 1 instance per image (the ground truth's share)")
        try:
            plan.one_instance = probe_in_subprocess(config, "reversible", 1, (h, w), _ram_limit(device, ram_fraction),
                                                    **dict(run, instances=1))
        except NotMeasured as err:
            plan.not_measured.append(f"the ground truth's share: {err}")
    return plan


def _ram_limit(device: str, ram_fraction: float) -> Optional[int]:
    """The address space a measuring process may add: ``ram_fraction`` of the available memory on CPU."""
    return int(available_ram_bytes() * ram_fraction) or None if device == "cpu" else None


def _measure_mode(plan: Plan, mode: str, sweep: bool, ram_fraction: float, run: Dict[str, Any], log: Any
                  ) -> ModePlan:
    """One mode at batch 1 and 2 (``sweep``: every ``plain_segments`` setting at batch 1 too), as :func:`make_plan`."""
    mp = ModePlan(mode)
    for b in (1, 2):
        limit = _ram_limit(plan.device, ram_fraction)
        sweep_b = sweep and b == 1
        # On CPU the peak probe's allocator policy slows steps that allocate more: the settings
        # are then counted and timed in a process of their own, without it.
        apart = sweep_b and plan.device == "cpu"
        log(f"measuring {mode} at batch {b}, {plan.shape[0]}x{plan.shape[1]}"
            + (" and every plain_segments setting" if sweep_b else "")
            + (f" (may use {limit / GIB:.1f} GiB)" if limit else ""))
        try:
            mp.probes.append(probe_in_subprocess(plan.config, mode, b, plan.shape, limit, sweep=sweep_b and not apart,
                                                 **run))
            if apart:
                timed = probe_in_subprocess(plan.config, mode, b, plan.shape, limit, sweep=True, peak=False, **run)
                mp.probes[-1].plain_segments = timed.plain_segments
                mp.probes[-1].plain_segments_note = timed.plain_segments_note
            if mp.probes[-1].plain_segments_note:
                plan.not_measured.append(mp.probes[-1].plain_segments_note)
        except NotMeasured as err:
            where = f"this machine's available memory ({limit / GIB:.1f} GiB allowed)" if limit else plan.device
            mp.skipped = f"not measured at batch {b}: {err}" + (
                f"; it needs more than {where}" if "fit" in str(err) else "")
            plan.not_measured.append(f"{mode}: {mp.skipped}")
            break
    return mp
