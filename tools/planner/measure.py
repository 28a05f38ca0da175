"""One measurement of the planner: short training steps of a config's real model and optimizer.

:func:`probe` measures in this process, :func:`probe_in_subprocess` in a fresh one under an
address-space limit (docs/planner.md, Method); ``python -m planner.measure JOB OUT`` is that process's entry.
"""
from __future__ import annotations

import ast
import gc
import inspect
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from meters import FreshProcessKilled, NoPeak, _status_bytes, peak_probe_for, run_fresh

from .config import NotMeasured, PlanError, build_model, is_oom, load_config, one_line, root_cause, set_mode, \
    training_shape
from .inputs import BOXES_PER_IMAGE, dataset_batch, synthetic_batch
from .predict import Probe

__all__ = ["probe", "probe_in_subprocess", "available_ram_bytes"]


def _storage_bytes(tensors: Sequence[Any]) -> int:
    storages = {s.data_ptr(): s.nbytes() for s in (t.untyped_storage() for t in tensors)}
    return sum(storages.values())


def _sweep_plain_segments(model: Any, run_step: Callable[[], Any], forward: Callable[[], Any]
                          ) -> Tuple[Dict[str, Dict[str, float]], Optional[str]]:
    """Saved bytes of one forward and one step's time per ``plain_segments`` setting, up to one that does not fit."""
    from revbifpn_mm.core import SavedTensorCounter

    backbone = model.backbone
    params = list(model.parameters())
    out: Dict[str, Dict[str, float]] = {}
    note = None
    for k in range(backbone.rev_stack.max_plain_segments + 1):  # the model is the probe's: left at the last k
        backbone.set_policy(plain_segments=k)
        try:
            with SavedTensorCounter(exclude=params) as saved:
                forward()
            run_step()  # warm-up of this setting
            start = time.perf_counter()
            run_step()
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            note = f"plain_segments={k} and above: do not fit in the memory this process may use"
            break  # keeping more does not fit here either
        finally:
            gc.collect()
        out[str(k)] = dict(saved=float(saved.nbytes), step_s=time.perf_counter() - start)
    return out, note


def _optimizer(cfg: Any, model: Any, config: str, device: Any) -> Tuple[Any, bool]:
    """The config's optimizer wrapper for ``model``, and whether the config asks for AMP (handled here)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    optim_cfg = dict(cfg.optim_wrapper)
    amp = optim_cfg.get("type") == "AmpOptimWrapper"
    if amp:  # autocast is handled by the probe
        optim_cfg = dict({k: v for k, v in optim_cfg.items() if k not in ("loss_scale", "dtype")}, type="OptimWrapper")
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        try:
            return build_optim_wrapper(model, optim_cfg), amp
        except Exception as err:  # noqa: BLE001
            if is_oom(root_cause(err)):
                raise NotMeasured(f"the optimizer does not fit in the memory this process may use on {device}") from err
            raise PlanError(f"the optimizer of {config} does not build: {one_line(root_cause(err))}") from err


def _run_steps(model: Any, optim: Any, packed: Dict[str, Any], amp_dtype: Any, meter: Any, sweep: bool,
               watch: Optional[_AssignWatch] = None) -> Dict[str, Any]:
    """Warm up, then measure forward + backward and the optimizer step apart (bytes above the start, seconds)."""
    dev = next(model.parameters()).device

    def forward() -> Any:
        data = model.data_preprocessor(packed, True)
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = model(**data, mode="loss")
        return model.parse_losses(losses)[0]

    def fwd_bwd() -> None:
        optim.backward(forward())

    def opt_step() -> None:
        optim.step()
        optim.zero_grad(set_to_none=False)

    fwd_bwd()  # warm-up: allocates the gradients and lazily initialised buffers
    opt_step()  # ... and the optimizer state
    start = time.perf_counter()
    watch.start() if watch else meter.reset()
    fwd_bwd()
    fb = watch.stop() if watch else meter.read()
    reserved = torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else None
    meter.reset()
    opt_step()
    op = meter.read()
    seconds = time.perf_counter() - start
    settings, note = _sweep_plain_segments(model, lambda: (fwd_bwd(), optim.zero_grad(set_to_none=False)), forward) \
        if sweep and hasattr(model.backbone, "set_policy") else ({}, None)
    split = watch is not None and bool(watch.assigners)
    return dict(fwd_bwd_bytes=int(fb), optim_step_bytes=int(op), step_s=seconds, reserved_bytes=reserved,
                plain_segments=settings, plain_segments_note=note, assign_peak_bytes=watch.assign if split else None,
                outside_assign_bytes=watch.outside if split else None)


class _AssignWatch:
    """Splits the peak of one forward + backward into the peak while the detector's ``MaxIoUAssigner``
    runs and the peak outside it (the step's peak when ``gpu_assign_thr`` assigns on the CPU)."""

    def __init__(self, meter: Any, dev: Any, model: Any) -> None:
        heads = [getattr(model, name, None) for name in ("rpn_head", "bbox_head")]
        self.assigners = [h.assigner for h in heads if hasattr(getattr(h, "assigner", None), "gpu_assign_thr")]
        self.meter, self.dev = meter, dev
        self.outside = self.assign = self.start_level = self.base = 0

    def _level(self) -> int:
        return torch.cuda.memory_allocated(self.dev) if self.dev.type == "cuda" else _status_bytes("VmRSS:")

    def _cut(self) -> int:
        """The peak since the last cut, above the level at :meth:`start`; the meter restarts."""
        peak = self.meter.read() + self.base - self.start_level
        self.meter.reset()
        self.base = self._level()
        return peak

    def _wrap(self, assigner: Any) -> None:
        original = assigner.assign

        def assign(*args: Any, **kwargs: Any) -> Any:
            self.outside = max(self.outside, self._cut())
            try:
                return original(*args, **kwargs)
            finally:
                self.assign = max(self.assign, self._cut())
        assigner.assign = assign

    def start(self) -> None:
        """Reset the meter and watch the assigners."""
        self.meter.reset()
        self.start_level = self.base = self._level()
        for assigner in self.assigners:
            self._wrap(assigner)

    def stop(self) -> int:
        """Stop watching; the peak of the whole forward + backward above the start."""
        self.outside = max(self.outside, self._cut())
        for assigner in self.assigners:
            del assigner.assign  # the class's method again
        return max(self.outside, self.assign)


def _raise_not_measured(err: BaseException, dev: Any, batch: int, amp_dtype: Any) -> None:
    """Raise the :class:`NotMeasured` a failed step stands for (out of memory, precision rejected), if any."""
    text = str(err)
    if is_oom(err):
        raise NotMeasured(f"does not fit in the memory this process may use on {dev} at batch {batch}") from err
    if amp_dtype is not None and ("BFloat16" in text or "Half" in text or "dtype" in text):
        where = _failing_op(err)
        raise NotMeasured(f"the model does not run under {amp_dtype} autocast on {dev.type}"
                          + (f" ({where} rejects it)" if where else "") + f": {one_line(err)}; "
                          "measure fp32, or --amp on a CUDA device (--device cuda)") from err


def probe(config: str, mode: str, batch: int, shape: Optional[Tuple[int, int]] = None,
          amp: bool = False, device: str = "cpu", cfg_options: Optional[Dict[str, Any]] = None,
          sweep: bool = False, peak: bool = True, instances: int = BOXES_PER_IMAGE,
          mask_format: str = "bitmap", data: str = "synthetic",
          box_sides: Optional[Sequence[Sequence[float]]] = None) -> Probe:
    """Measure one training step of the config's model, in this process.

    On CPU the peak resident set only grows and glibc's allocation policy is changed for the
    whole process (see ``meters.RssPeakProbe``): call it in a fresh process, e.g. through
    :func:`probe_in_subprocess`.

    Args:
        config: config file.
        mode: ``'reversible'``, ``'plain'`` or ``'plain_segments=k'`` (the backbone's run policy).
        batch: samples per step.
        shape: ``(height, width)`` of the input; default :func:`training_shape`.
        amp: autocast the forward (CPU: bfloat16, CUDA: float16).
        device: ``'cpu'`` or a CUDA device.
        cfg_options: config overrides.
        sweep: also measure every ``plain_segments`` setting (:attr:`Probe.plain_segments`).
        peak: read the peak memory (on CPU this slows the steps that follow: time without it).
        instances, mask_format, box_sides: detectors' synthetic boxes per image, their masks (``'bitmap'``,
            ``'polygon'``) and sizes (drawn from these (w, h) fractions of the image, ``None``: 2-20 %).
        data: ``'synthetic'``, or ``'dataset'``: the config's densest training images, through its pipeline.

    Raises:
        PlanError: the model or its optimizer does not build.
        NotMeasured: the step does not fit in memory or the model rejects the precision.
    """
    dev = torch.device(device)
    meter = peak_probe_for(dev) if peak else NoPeak()  # first: on CPU it sets glibc's mmap threshold
    if meter is None:
        raise NotMeasured(f"no way to read peak memory on {dev} here (CPU needs Linux + glibc)")
    cfg = load_config(config, cfg_options)
    shape = tuple(shape or training_shape(cfg)[:2])
    set_mode(cfg, mode)
    model = build_model(cfg, config, dev)  # SyncBN without a process group runs as BN: the same memory per device
    optim, config_amp = _optimizer(cfg, model, config, dev)
    amp = amp or config_amp
    amp_dtype = (torch.bfloat16 if dev.type == "cpu" else torch.float16) if amp else None
    packed, instances, shape = dataset_batch(cfg, batch) if data == "dataset" else (
        synthetic_batch(cfg, model, batch, shape, dev, instances, mask_format, box_sides), instances, shape)
    watch = _AssignWatch(meter, dev, model) if peak else None
    try:
        steps = _run_steps(model, optim, packed, amp_dtype, meter, sweep, watch)
    except (RuntimeError, MemoryError) as err:
        _raise_not_measured(err, dev, batch, amp_dtype)
        raise
    return Probe(mode=mode, batch=batch, shape=shape, device=str(dev), amp=amp,
                 instances=instances if cfg.default_scope == "mmdet" else 0, **_state_bytes(model, optim), **steps)


def _state_bytes(model: Any, optim: Any) -> Dict[str, Any]:
    """The optimizer's name and the bytes of the parameters, buffers, gradients and optimizer state."""
    params = list(model.parameters())
    state = [t for s in optim.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return dict(optimizer=type(optim.optimizer).__name__, params_bytes=_storage_bytes(params),
                buffers_bytes=_storage_bytes(list(model.buffers())),
                grads_bytes=_storage_bytes([p.grad for p in params if p.grad is not None]),
                optim_bytes=_storage_bytes(state))


def _failing_op(err: BaseException) -> Optional[str]:
    """The mmcv op (e.g. ``'mmcv.ops.nms'``) in whose code ``err`` was raised, if any."""
    paths = [frame.filename.replace(os.sep, "/") for frame in traceback.extract_tb(err.__traceback__)]
    ops = [os.path.splitext(os.path.basename(path))[0] for path in paths if "/mmcv/ops/" in path]
    return "mmcv.ops." + ops[-1] if ops else None


# --------------------------------------------------------------------------- fresh processes
def available_ram_bytes() -> int:
    """``MemAvailable`` of this machine (Linux), or 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), 0)
    except OSError:
        return 0


def probe_in_subprocess(config: str, mode: str, batch: int, shape: Optional[Tuple[int, int]] = None,
                        ram_limit_bytes: Optional[int] = None, threads: Optional[int] = None,
                        timeout: Optional[float] = None, **kwargs: Any) -> Probe:
    """:func:`probe` in a fresh Python process (the peak resident set is per process).

    Args:
        config, mode, batch, shape: as :func:`probe`.
        ram_limit_bytes: address space the measuring process may add after start-up
            (``RLIMIT_AS``); a step that needs more stops with :class:`NotMeasured` instead
            of pushing the machine into swap or the OOM killer. ``None``: no limit.
        threads: torch CPU threads of the measuring process.
        timeout: seconds before the measurement is abandoned.
        **kwargs: the other keywords of :func:`probe` (``amp``, ``device``, ``cfg_options``, ...).

    Raises:
        PlanError, NotMeasured: as :func:`probe`, re-raised from the measuring process.
        TypeError: a keyword :func:`probe` does not take.
    """
    inspect.signature(probe).bind(config, mode, batch, shape, **kwargs)
    kwargs.update(config=config, mode=mode, batch=batch, shape=shape,
                  cfg_options=repr(kwargs.get("cfg_options") or {}))  # repr keeps tuples (a Resize scale) tuples
    job = dict(ram_limit_bytes=ram_limit_bytes, threads=threads, kwargs=kwargs)
    try:
        res = run_fresh("planner.measure", [json.dumps(job)], timeout=timeout)
    except FreshProcessKilled as err:
        raise NotMeasured(f"{err}, probably for lack of memory at batch {batch}") from err
    if "error" in res:
        cls = {"PlanError": PlanError, "NotMeasured": NotMeasured}.get(res["error"], RuntimeError)
        raise cls(res["message"])
    res["shape"] = tuple(res["shape"])
    return Probe(**res)


def _limit_address_space(config: str, cfg_options: Optional[Dict[str, Any]], ram_limit_bytes: int) -> None:
    """Let this process add at most ``ram_limit_bytes`` of address space from here (``RLIMIT_AS``)."""
    import resource  # Unix only

    import torch._dynamo  # noqa: F401  (torch's optimizers import it on first use: its libraries mapped now)

    load_config(config, cfg_options)  # imports the codebase (maps its libraries)
    # thread stacks and malloc arenas reserve some address space without using memory: they
    # come out of the allowance (conservative)
    limit = _status_bytes("VmSize:") + ram_limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _child(job_json: str, out: str) -> int:
    """Entry of the measuring process: run :func:`probe`, write its result (or error) as JSON."""
    job = json.loads(job_json)
    kwargs = dict(job["kwargs"], cfg_options=ast.literal_eval(job["kwargs"]["cfg_options"]) or None)
    if job["threads"]:
        torch.set_num_threads(int(job["threads"]))
    try:
        if job["ram_limit_bytes"]:
            _limit_address_space(kwargs["config"], kwargs["cfg_options"], int(job["ram_limit_bytes"]))
        res = asdict(probe(**kwargs))
    except (PlanError, NotMeasured) as err:
        res = dict(error=type(err).__name__, message=str(err))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
