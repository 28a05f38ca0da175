"""Training-memory planner: will a detection or segmentation config fit on a GPU, and how to train it.

Backs ``tools/plan_memory.py``; the method, its allowance and its checks are in ``docs/planner.md``.
It measures rather than guesses: the config's real model and optimizer run short training steps on
synthetic inputs of the training resolution, each measurement in a fresh process (:func:`probe`:
fully reversible at batch 1 and 2, every ``plain_segments`` setting at batch 1, plain mode where it
fits), and :class:`ModePlan` extrapolates linearly in the batch::

    allocated(k, b) = fixed + max(fb(1) + (b - 1) * (fb(2) - fb(1)) + b * kept(k), opt)
    on_gpu(k, b)    = allocated(k, b) * (1 + FRAGMENTATION) + CONTEXT_GIB

Memory is in GiB (2^30 bytes), as ``nvidia-smi`` and card specs count it.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["PlanError", "NotMeasured", "Probe", "ModePlan", "Plan", "CONTEXT_GIB", "FRAGMENTATION",
           "BATCHES", "load_config", "training_shape", "probe", "probe_in_subprocess", "make_plan",
           "render_plan", "available_ram_bytes", "expected_seconds"]

GIB = float(1 << 30)
BATCHES: Tuple[int, ...] = (1, 2, 4, 8)
CONTEXT_GIB = 1.0
"""GPU memory taken by the CUDA context (driver, kernels of torch/cuDNN/cuBLAS) outside the
caching allocator. An assumption: a CUDA 12 context takes 0.3-0.6 GiB with lazy module loading,
more without; 1.0 GiB leaves room for cuDNN/cuBLAS workspaces."""
FRAGMENTATION = 0.10
"""Fraction of the allocated peak added for the caching allocator (memory it reserves beyond
what tensors use: block rounding and fragmentation). An assumption; on a CUDA device the probe
also records ``torch.cuda.max_memory_reserved`` to check it."""
ALLOWANCE_TEXT = ("CUDA context + caching-allocator fragmentation: {ctx:.1f} GiB + {frag:.0%} of the "
                  "allocated peak (an assumption, not measured here)")
BOXES_PER_IMAGE = 8
MODES = ("reversible", "budgets", "plain")


class PlanError(RuntimeError):
    """The config cannot be planned: it does not load or build, or has no training resolution."""


class NotMeasured(RuntimeError):
    """A measurement could not be taken here (too little memory, unsupported precision)."""


# --------------------------------------------------------------------------- config
def load_config(path: str, cfg_options: Optional[Dict[str, Any]] = None) -> Any:
    """Load an mmdet/mmseg config and register its codebase.

    Args:
        path: config file.
        cfg_options: ``key=value`` overrides, as ``--cfg-options`` gives them.

    Returns:
        The mmengine ``Config``; its ``default_scope`` is ``'mmdet'`` or ``'mmseg'``.

    Raises:
        PlanError: the file is missing or does not parse, or its codebase is not supported.
    """
    from mmengine.config import Config

    from .compat import register_scope

    if not os.path.isfile(path):
        raise PlanError(f"config file not found: {path}")
    try:
        cfg = Config.fromfile(path)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    except Exception as err:  # noqa: BLE001  (mmengine raises many types)
        raise PlanError(f"config {path} does not load: {_one_line(err)}") from err
    if "model" not in cfg:
        raise PlanError(f"config {path} has no 'model'")
    try:
        register_scope(cfg)
    except (ValueError, ImportError) as err:
        raise PlanError(f"config {path}: {_one_line(err)}") from err
    if cfg.get("default_scope", None) is None:
        cfg.default_scope = "mmdet"
    return cfg


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _pipeline(cfg: Any) -> List[Dict[str, Any]]:
    ds = cfg.get("train_dataloader", {}).get("dataset", {})
    while isinstance(ds, dict) and "pipeline" not in ds and "dataset" in ds:  # RepeatDataset & co
        ds = ds["dataset"]
    if isinstance(ds, dict) and ds.get("pipeline"):
        return list(ds["pipeline"])
    return list(cfg.get("train_pipeline", []) or [])


def _pad(size: int, divisor: int) -> int:
    return int(math.ceil(size / divisor) * divisor) if divisor > 1 else int(size)


def training_shape(cfg: Any) -> Tuple[int, int, str]:
    """The input size (height, width) of one training sample, after resizing, cropping and padding.

    mmdet: the largest scale of the training pipeline's ``Resize`` / ``RandomResize`` /
    ``RandomChoiceResize`` (``scale=(w, h)``; with ``keep_ratio`` a landscape image gets the
    short side of the scale as its height and at most the long side as its width), cut by a
    ``RandomCrop``, padded to ``pad_size_divisor``. mmseg: the crop size of ``RandomCrop``,
    else the data preprocessor's fixed ``size``, else the resize scale, padded the same way.

    Returns:
        ``(height, width, description)``.

    Raises:
        PlanError: no training resolution can be read from the config (pass ``--shape H W``).
    """
    pre = cfg.model.get("data_preprocessor", {}) or {}
    h = w = None
    how = []
    for t in _pipeline(cfg):
        kind = t.get("type", "")
        scales = None
        if kind in ("Resize", "FixShapeResize", "RandomResize") and t.get("scale") is not None:
            scale = t["scale"]
            # one (w, h) or an int, or (RandomResize) a list of two (w, h) bounding a range
            nested = isinstance(scale, (list, tuple)) and scale and isinstance(scale[0], (list, tuple))
            scales = list(scale) if nested else [scale]
        elif kind == "FixShapeResize" and t.get("width"):
            scales = [(t["width"], t["height"])]
        elif kind == "RandomChoiceResize" and t.get("scales"):
            scales = t["scales"]
        if scales is not None:
            scales = [s if isinstance(s, (list, tuple)) else (s, s) for s in scales]
            sw, sh = max(scales, key=lambda s: s[0] * s[1])
            ratio = t.get("ratio_range")
            if ratio is not None:  # mmseg RandomResize: scale * max ratio
                sw, sh = sw * max(ratio), sh * max(ratio)
            if t.get("keep_ratio", False):
                h, w = min(sw, sh), max(sw, sh)
                how.append(f"{kind} {tuple(t.get('scale', scales[0]))} keep_ratio: landscape {int(h)}x{int(w)}")
            else:
                w, h = sw, sh
                how.append(f"{kind} to {int(h)}x{int(w)}")
        elif kind in ("RandomCrop", "RandomCenterCropPad") and t.get("crop_size") is not None:
            ch, cw = t["crop_size"] if cfg.default_scope == "mmseg" else tuple(reversed(t["crop_size"]))
            h, w = (min(h, ch), min(w, cw)) if h is not None else (ch, cw)
            how.append(f"{kind} {int(ch)}x{int(cw)}")
    size = pre.get("size")
    if size is not None:  # mmseg: every sample padded to this size
        h, w = (max(h, size[0]), max(w, size[1])) if h is not None else tuple(size)
        how.append(f"padded to size {size[0]}x{size[1]}")
    if h is None:
        raise PlanError("no training resolution in the config's training pipeline (no Resize / "
                        "RandomResize / RandomCrop); pass --shape H W")
    div = int(pre.get("pad_size_divisor", pre.get("size_divisor", 1)) or 1)
    ph, pw = _pad(h, div), _pad(w, div)
    if div > 1 and (ph, pw) != (int(h), int(w)):
        how.append(f"padded to /{div}")
    return ph, pw, ", ".join(how)


# --------------------------------------------------------------------------- one measurement
@dataclass
class Probe:
    """What one training-step measurement found (bytes)."""

    mode: str  # 'reversible', 'plain' or 'plain_segments=k'
    batch: int
    shape: Tuple[int, int]
    device: str
    amp: bool
    optimizer: str
    params_bytes: int
    buffers_bytes: int
    grads_bytes: int
    optim_bytes: int
    fwd_bwd_bytes: int
    optim_step_bytes: int
    step_s: float
    reserved_bytes: Optional[int] = None
    settings: Dict[str, Dict[str, float]] = field(default_factory=dict)
    """With ``budgets``: per ``plain_segments`` setting (``'0'`` ... ``'n'``), the bytes one forward
    saves for backward (``saved``) and the seconds of one training step (``step_s``), at this batch."""
    settings_note: Optional[str] = None
    """The budget settings that could not be measured, and why."""
    instances: int = 0
    """Ground-truth instances per image of the measured batch (the most of any image)."""
    assign_peak_bytes: Optional[int] = None
    """Detectors with a ``MaxIoUAssigner`` (``gpu_assign_thr``): the forward + backward peak reached
    while the anchors are assigned, image by image; ``fwd_bwd_bytes`` is the larger of this and
    :attr:`outside_assign_bytes`."""
    outside_assign_bytes: Optional[int] = None
    """The forward + backward peak outside the assignment: the step's peak with the assignment on the
    CPU (``gpu_assign_thr`` below the instances), where it holds no GPU memory."""

    @property
    def fixed_bytes(self) -> int:
        """Parameters, buffers, gradients and optimizer state."""
        return self.params_bytes + self.buffers_bytes + self.grads_bytes + self.optim_bytes

    @property
    def peak_bytes(self) -> int:
        """Peak of the whole training step: fixed costs plus the larger phase working set."""
        return self.fixed_bytes + max(self.fwd_bwd_bytes, self.optim_step_bytes)


def _storage_bytes(tensors: Sequence[Any]) -> int:
    storages = {s.data_ptr(): s.nbytes() for s in (t.untyped_storage() for t in tensors)}
    return sum(storages.values())


def _num_classes(node: Any) -> Optional[int]:
    if isinstance(node, dict):
        if isinstance(node.get("num_classes"), int):
            return node["num_classes"]
        for v in node.values():
            found = _num_classes(v)
            if found is not None:
                return found
    elif isinstance(node, (list, tuple)):
        for v in node:
            found = _num_classes(v)
            if found is not None:
                return found
    return None


def _inputs(cfg: Any, model: Any, batch: int, shape: Tuple[int, int], device: Any,
            instances: int = BOXES_PER_IMAGE, mask_format: str = "bitmap") -> Dict[str, Any]:
    import torch

    h, w = shape
    classes = _num_classes(cfg.model) or 80
    if cfg.default_scope == "mmseg":
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        gen = torch.Generator().manual_seed(0)
        inputs, samples = [], []
        for _ in range(batch):
            inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
            s = SegDataSample()
            s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0),
                                flip=False, img_path="<synthetic>"))
            s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w), generator=gen))
            samples.append(s)
        return dict(inputs=inputs, data_samples=samples)
    return _det_inputs(batch, (h, w), instances, max(2, classes), mask_format if getattr(model, "with_mask", False)
                       else None, device)


def _det_inputs(batch: int, shape: Tuple[int, int], instances: int, classes: int, mask_format: Optional[str],
                device: Any) -> Dict[str, Any]:
    """A detection batch: uint8 images, ``instances`` random boxes per image (2-20 % of the image side)
    and, with ``mask_format`` (``'bitmap'``: one uint8 image-sized plane per instance, as mmdet's
    ``LoadAnnotations`` makes them; ``'polygon'``: a 4-point polygon), masks filling the boxes."""
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks, PolygonMasks
    from mmengine.structures import InstanceData

    h, w = shape
    rng = np.random.default_rng(0)
    inputs, samples = [], []
    for _ in range(batch):
        size = rng.uniform(0.02, 0.2, (instances, 2)) * (w, h)
        x0y0 = rng.uniform(0, 1, (instances, 2)) * ((w, h) - size)
        boxes = np.concatenate([x0y0, x0y0 + size], axis=1).astype(np.float32)
        gt = InstanceData(bboxes=torch.from_numpy(boxes).to(device),
                          labels=torch.from_numpy(rng.integers(0, classes, instances)).to(device))
        if mask_format == "polygon":
            gt.masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].astype(np.float64)] for b in boxes], h, w)
        elif mask_format:
            planes = np.zeros((instances, h, w), dtype=np.uint8)
            for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
                planes[k, y0:y1 + 1, x0:x1 + 1] = 1
            gt.masks = BitmapMasks(planes, h, w)
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                             scale_factor=(1.0, 1.0), flip=False, img_id=0, img_path="<synthetic>"))
        sample.gt_instances = gt
        samples.append(sample)
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)).to(device))
    return dict(inputs=inputs, data_samples=samples)


def _set_mode(cfg: Any, mode: str) -> None:
    """``mode``: ``'reversible'``, ``'plain'`` or ``'plain_segments=k'`` on a RevBiFPN backbone."""
    backbone = cfg.model.get("backbone", {})
    if backbone.get("type") != "RevBiFPN":
        if mode != "plain":
            raise NotMeasured(f"the backbone {backbone.get('type')!r} has no reversible mode")
        return
    if mode.startswith("plain_segments="):
        backbone["plain_segments"] = int(mode.split("=")[1])
    else:
        backbone["memory_mode"] = mode


def _budget_settings(model: Any, run_step: Callable[[], Any], forward: Callable[[], Any]
                     ) -> Tuple[Dict[str, Dict[str, float]], Optional[str]]:
    """Saved bytes of one forward and the time of one step at each ``plain_segments`` setting, from
    fully reversible up; the settings from the first that does not fit in memory on are left out."""
    import gc

    from ..core import SavedTensorCounter
    backbone = model.backbone
    params = list(model.parameters())
    out: Dict[str, Dict[str, float]] = {}
    note = None
    try:
        for k in range(backbone.rev_stack.budget_segments + 1):
            backbone.set_policy(plain_segments=k)
            try:
                with SavedTensorCounter(exclude=params) as saved:
                    loss = forward()
                del loss
                run_step()  # warm-up of this setting
                start = time.perf_counter()
                run_step()
            except (RuntimeError, MemoryError) as err:
                if not _is_oom(err):
                    raise
                note = f"plain_segments={k} and above: do not fit in the memory this process may use"
                break  # keeping more does not fit here either
            finally:
                gc.collect()
            out[str(k)] = dict(saved=float(saved.nbytes), step_s=time.perf_counter() - start)
    finally:
        backbone.set_policy(plain_segments=0)
    return out, note


def probe(config: str, mode: str, batch: int, shape: Optional[Tuple[int, int]] = None,
          amp: bool = False, device: str = "cpu", cfg_options: Optional[Dict[str, Any]] = None,
          budgets: bool = False, peak: bool = True, instances: int = BOXES_PER_IMAGE,
          mask_format: str = "bitmap", data: str = "synthetic") -> Probe:
    """Measure one training step of the config's model, in this process.

    On CPU the peak resident set only grows and glibc's allocation policy is changed for the
    whole process (see :class:`revbifpn_mm.core.memory.RssPeakProbe`): call it in a fresh
    process, e.g. through :func:`probe_in_subprocess`.

    Args:
        config: config file.
        mode: ``'reversible'``, ``'plain'`` or ``'plain_segments=k'`` (the backbone's run policy).
        batch: samples per step.
        shape: ``(height, width)`` of the input; default :func:`training_shape`.
        amp: autocast the forward (CPU: bfloat16, CUDA: float16).
        device: ``'cpu'`` or a CUDA device.
        cfg_options: config overrides.
        budgets: also measure every ``plain_segments`` setting (:attr:`Probe.settings`).
        peak: read the peak memory (on CPU this slows the steps that follow: time without it).
        instances: detectors, synthetic inputs: ground-truth boxes (and masks) per image.
        mask_format: ``'bitmap'`` or ``'polygon'`` masks where the model has a mask head.
        data: ``'synthetic'``, or ``'dataset'``: the ``batch`` training images with the most
            instances, through the config's own training pipeline (a check of the synthetic inputs).

    Returns:
        The :class:`Probe`.

    Raises:
        PlanError: the model or its optimizer does not build.
        NotMeasured: the step does not fit in memory or the model rejects the precision.
    """
    import torch

    from ..core.memory import peak_probe_for

    dev = torch.device(device)
    meter = peak_probe_for(dev) if peak else _NoPeak()  # first: on CPU it sets glibc's mmap threshold
    if meter is None:
        raise NotMeasured(f"no way to read peak memory on {dev} here (CPU needs Linux + glibc)")
    cfg = load_config(config, cfg_options)
    if shape is None:
        shape = training_shape(cfg)[:2]
    _set_mode(cfg, mode)
    if cfg.model.get("backbone", {}).get("init_cfg") is not None:
        cfg.model.backbone.init_cfg = None  # no checkpoint is needed to measure memory
    registry = importlib.import_module(f"{cfg.default_scope}.registry")
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        try:
            model = registry.MODELS.build(cfg.model)
            model.to(dev).train()  # SyncBN without a process group runs as BN: the same memory per device
        except Exception as err:  # noqa: BLE001
            if _is_oom(_root_cause(err)):
                raise NotMeasured(f"the model does not fit in the memory this process may use on {dev}") from err
            raise PlanError(f"the model of {config} does not build: {_one_line(_root_cause(err))}") from err
        optim_cfg = dict(cfg.optim_wrapper)
        if optim_cfg.get("type") == "AmpOptimWrapper":  # autocast is handled here (amp=True)
            amp = True
            optim_cfg = {k: v for k, v in optim_cfg.items() if k not in ("loss_scale", "dtype")}
            optim_cfg["type"] = "OptimWrapper"
        try:
            optim = build_optim_wrapper(model, optim_cfg)
        except Exception as err:  # noqa: BLE001
            if _is_oom(_root_cause(err)):
                raise NotMeasured(f"the optimizer does not fit in the memory this process may use on {dev}") from err
            raise PlanError(f"the optimizer of {config} does not build: {_one_line(_root_cause(err))}") from err
    amp_dtype = (torch.bfloat16 if dev.type == "cpu" else torch.float16) if amp else None
    if data == "dataset":
        packed, instances, shape = _dataset_batch(cfg, batch)
    else:
        packed = _inputs(cfg, model, batch, shape, dev, instances, mask_format)
    watch = _AssignWatch(meter, dev, model) if peak else None

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

    try:
        fwd_bwd()  # warm-up: allocates the gradients and lazily initialised buffers
        opt_step()  # ... and the optimizer state
        start = time.perf_counter()
        watch.start() if watch else meter.reset()
        fwd_bwd()
        fb = watch.stop() if watch else meter.read()
        reserved = None
        if dev.type == "cuda":
            reserved = torch.cuda.max_memory_reserved(dev)
        meter.reset()
        opt_step()
        op = meter.read()
        seconds = time.perf_counter() - start
        settings, note = _budget_settings(model, lambda: (fwd_bwd(), optim.zero_grad(set_to_none=False)), forward) \
            if budgets and hasattr(model.backbone, "set_policy") else ({}, None)
    except (RuntimeError, MemoryError) as err:
        text = str(err)
        if _is_oom(err):
            raise NotMeasured(f"does not fit in the memory this process may use on {dev} at batch {batch}") from err
        if amp and ("BFloat16" in text or "Half" in text or "dtype" in text):
            where = _failing_op(err)
            raise NotMeasured(f"the model does not run under {amp_dtype} autocast on {dev.type}"
                              + (f" ({where} rejects it)" if where else "") + f": {_one_line(err)}; "
                              "measure fp32, or --amp on a CUDA device (--device cuda)") from err
        raise
    params = list(model.parameters())
    state = [t for s in optim.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    optimizer = type(optim.optimizer).__name__
    return Probe(mode=mode, batch=batch, shape=tuple(shape), device=str(dev), amp=amp, optimizer=optimizer,
                 params_bytes=_storage_bytes(params), buffers_bytes=_storage_bytes(list(model.buffers())),
                 grads_bytes=_storage_bytes([p.grad for p in params if p.grad is not None]),
                 optim_bytes=_storage_bytes(state), fwd_bwd_bytes=int(fb), optim_step_bytes=int(op),
                 step_s=seconds, reserved_bytes=reserved, settings=settings, settings_note=note,
                 instances=instances if cfg.default_scope == "mmdet" else 0,
                 assign_peak_bytes=watch.assign if watch and watch.watched else None,
                 outside_assign_bytes=watch.outside if watch and watch.watched else None)


class _AssignWatch:
    """Splits the peak of one forward + backward at the detector's ``MaxIoUAssigner``: the peak while
    anchors are assigned (mmdet's assigner holds a ground truth x anchors IoU matrix and its
    intermediates per image) and the peak outside, which is the step's peak when
    ``gpu_assign_thr`` sends the assignment to the CPU."""

    def __init__(self, meter: Any, dev: Any, model: Any) -> None:
        heads = [getattr(model, name, None) for name in ("rpn_head", "bbox_head")]
        self.assigners = [h.assigner for h in heads if hasattr(getattr(h, "assigner", None), "gpu_assign_thr")]
        self.watched = bool(self.assigners)
        self.meter, self.dev = meter, dev
        self.outside = self.assign = self.start_level = self.base = 0

    def _level(self) -> int:
        import torch

        from ..core.memory import _status_bytes
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


def _dataset_batch(cfg: Any, batch: int) -> Tuple[Dict[str, Any], int, Tuple[int, int]]:
    """The ``batch`` distinct training images with the most instances, through the config's training
    pipeline, collated as the dataloader does; the most instances of one of them; the largest
    (height, width) among them."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope

    registry = importlib.import_module(f"{cfg.default_scope}.registry")
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        dataset = registry.DATASETS.build(cfg.train_dataloader.dataset)
        counts: Dict[str, Tuple[int, int]] = {}
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            kept = sum(1 for inst in info.get("instances", []) if not inst.get("ignore_flag", 0))
            counts.setdefault(info.get("img_path", str(i)), (kept, i))
        top = sorted(counts.values(), reverse=True)[:batch]
        if len(top) < batch:
            raise PlanError(f"the training dataset has {len(top)} images, fewer than batch {batch}")
        packed = pseudo_collate([dataset[i] for _, i in top])
    shape = (max(i.shape[-2] for i in packed["inputs"]), max(i.shape[-1] for i in packed["inputs"]))
    return packed, top[0][0], shape


def _failing_op(err: BaseException) -> Optional[str]:
    """The mmcv op (e.g. ``'mmcv.ops.nms'``) in whose code ``err`` was raised, if any."""
    import traceback

    name = None
    for frame in traceback.extract_tb(err.__traceback__):
        path = frame.filename.replace(os.sep, "/")
        if "/mmcv/ops/" in path:
            name = "mmcv.ops." + os.path.splitext(os.path.basename(path))[0]
    return name


def _is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA out of memory, CPU allocator or Python)."""
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain (mmengine wraps build errors several times)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or err.__context__
        if nxt is None:
            break
        err = nxt
    return err


# --------------------------------------------------------------------------- fresh processes
def available_ram_bytes() -> int:
    """``MemAvailable`` of this machine (Linux), or 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _NoPeak:  # stands in for the peak probe where only time is measured
    reset = staticmethod(lambda: None)
    read = staticmethod(lambda: 0)


def probe_in_subprocess(config: str, mode: str, batch: int, shape: Optional[Tuple[int, int]] = None,
                        amp: bool = False, device: str = "cpu", cfg_options: Optional[Dict[str, Any]] = None,
                        ram_limit_bytes: Optional[int] = None, threads: Optional[int] = None,
                        timeout: Optional[float] = None, budgets: bool = False, peak: bool = True,
                        instances: int = BOXES_PER_IMAGE, mask_format: str = "bitmap",
                        data: str = "synthetic") -> Probe:
    """:func:`probe` in a fresh Python process (the peak resident set is per process).

    Args:
        ram_limit_bytes: address space the measuring process may add after start-up
            (``RLIMIT_AS``); a step that needs more stops with :class:`NotMeasured` instead
            of pushing the machine into swap or the OOM killer. ``None``: no limit.
        threads: torch CPU threads of the measuring process.
        timeout: seconds before the measurement is abandoned.
        Other arguments: as :func:`probe`.

    Raises:
        PlanError, NotMeasured: as :func:`probe`, re-raised from the measuring process.
    """
    job = dict(config=config, mode=mode, batch=batch, shape=list(shape) if shape else None, amp=amp,
               device=device, cfg_options=repr(cfg_options or {}),  # repr keeps tuples (a Resize scale) tuples
               ram_limit_bytes=ram_limit_bytes, threads=threads,
               budgets=budgets, peak=peak, instances=instances, mask_format=mask_format, data=data)
    with tempfile.TemporaryDirectory(prefix="revbifpn_plan_") as tmp:
        out = os.path.join(tmp, "probe.json")
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        proc = subprocess.run([sys.executable, "-m", "revbifpn_mm.mm.planner", json.dumps(job), out],
                              capture_output=True, text=True, env=env, timeout=timeout)
        if not os.path.isfile(out):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            if proc.returncode < 0 or proc.returncode == 137:
                raise NotMeasured(f"the measuring process was killed (signal {-proc.returncode}), "
                                  f"probably for lack of memory at batch {batch}")
            raise RuntimeError("the measuring process failed:\n" + "\n".join(tail))
        with open(out, encoding="utf-8") as f:
            res = json.load(f)
    if "error" in res:
        cls = {"PlanError": PlanError, "NotMeasured": NotMeasured}.get(res["error"], RuntimeError)
        raise cls(res["message"])
    res["shape"] = tuple(res["shape"])
    return Probe(**res)


def _child(job_json: str, out: str) -> int:
    """Entry of the measuring process: run :func:`probe`, write its result (or error) as JSON."""
    import ast

    job = json.loads(job_json)
    job["cfg_options"] = ast.literal_eval(job["cfg_options"])
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    try:
        if job.get("ram_limit_bytes"):
            import resource

            load_config(job["config"], job["cfg_options"] or None)  # imports the codebase (maps its libraries)
            with open("/proc/self/status") as f:
                size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            # thread stacks and malloc arenas reserve some address space without using memory: they
            # come out of the allowance (conservative)
            limit = size + int(job["ram_limit_bytes"])
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        res = asdict(probe(job["config"], job["mode"], job["batch"], tuple(job["shape"]) if job["shape"] else None,
                           job["amp"], job["device"], job["cfg_options"] or None, job["budgets"], job["peak"],
                           job["instances"], job["mask_format"], job["data"]))
    except (PlanError, NotMeasured) as err:
        res = dict(error=type(err).__name__, message=str(err))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f)
    return 0


# --------------------------------------------------------------------------- plan
@dataclass
class ModePlan:
    """Measurements of one setting at batch 1 and 2, and the predictions made from them."""

    mode: str
    probes: List[Probe] = field(default_factory=list)
    skipped: Optional[str] = None

    @property
    def measured(self) -> bool:
        """Whether both measurements were taken."""
        return len(self.probes) == 2 and self.skipped is None

    @property
    def fixed_bytes(self) -> int:
        """Parameters, buffers, gradients and optimizer state."""
        return self.probes[0].fixed_bytes

    @property
    def per_sample_bytes(self) -> int:
        """Activation memory per sample: forward + backward working set at batch 2 minus at batch 1."""
        return self.probes[1].fwd_bwd_bytes - self.probes[0].fwd_bwd_bytes

    @property
    def step_constant_bytes(self) -> int:
        """Batch-independent part of the forward + backward working set."""
        return self.probes[0].fwd_bwd_bytes - self.per_sample_bytes

    @property
    def optim_step_bytes(self) -> int:
        """Working set of the optimizer step (the larger of the two runs)."""
        return max(p.optim_step_bytes for p in self.probes)

    def _line(self, attr: str, batch: int) -> float:
        first, second = (getattr(p, attr) for p in self.probes)
        return first + (batch - 1) * (second - first)

    def fwd_bwd(self, batch: int, assign_on_cpu: bool = False) -> float:
        """Predicted forward + backward working set at ``batch``, bytes. Where the probes split it at
        the assignment, the larger of the two lines (the peak may move out of the assignment as the
        batch grows); ``assign_on_cpu``: the line outside the assignment alone (``gpu_assign_thr``)."""
        if self.probes[0].outside_assign_bytes is None or self.probes[1].outside_assign_bytes is None:
            return self._line("fwd_bwd_bytes", batch)
        outside = self._line("outside_assign_bytes", batch)
        return outside if assign_on_cpu else max(outside, self._line("assign_peak_bytes", batch))

    def allocated(self, batch: int, kept: float = 0.0, assign_on_cpu: bool = False) -> float:
        """Predicted peak of allocated memory at ``batch`` with ``kept`` more bytes per sample, bytes."""
        fb = self.fwd_bwd(batch, assign_on_cpu) + batch * kept
        return self.fixed_bytes + max(fb, self.optim_step_bytes)

    def on_gpu(self, batch: int, kept: float = 0.0, context_gib: float = CONTEXT_GIB,
               fragmentation: float = FRAGMENTATION, assign_on_cpu: bool = False) -> float:
        """Predicted GPU memory at ``batch`` with the context/allocator allowance, bytes."""
        return self.allocated(batch, kept, assign_on_cpu) * (1 + fragmentation) + context_gib * GIB

    def largest_batch(self, gpu_bytes: float, kept: float = 0.0, context_gib: float = CONTEXT_GIB,
                      fragmentation: float = FRAGMENTATION, cap: int = 4096, assign_on_cpu: bool = False) -> int:
        """Largest batch whose prediction fits in ``gpu_bytes`` (0: not even batch 1; ``cap`` at most)."""
        def fits(b: int) -> bool:
            return self.on_gpu(b, kept, context_gib, fragmentation, assign_on_cpu) <= gpu_bytes
        if not fits(1):
            return 0
        lo, hi = 1, cap  # the prediction grows with the batch: the last fitting batch by bisection
        if fits(hi):
            return cap
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


@dataclass
class Plan:
    """A memory plan of one config: the reversible measurements, the budget settings, plain mode."""

    config: str
    scope: str
    shape: Tuple[int, int]
    shape_source: str
    amp: bool
    device: str
    batch: int
    """The config's own batch per device (``train_dataloader.batch_size``)."""
    auto_scale_lr: bool
    """Whether the config supports ``--auto-scale-lr``."""
    modes: List[ModePlan]
    not_measured: List[str] = field(default_factory=list)
    instances: int = 0
    """Detectors: ground-truth instances per image measured with (the dataset's most, or assumed)."""
    instances_source: str = ""
    one_instance: Optional[Probe] = None
    """Detectors: the fully reversible batch-1 step with one instance per image (the ground truth's
    and the assignment's share is the difference)."""
    gpu_assign_thr: float = -1
    """The config's ``train_cfg.rpn.assigner.gpu_assign_thr`` (-1: assignment on the GPU)."""

    @property
    def gt_bytes(self) -> Optional[float]:
        """Ground truth + assignment at batch 1: the working set with :attr:`instances` per image minus
        the one with a single instance (None where not measured)."""
        rev = self.reversible
        if rev is None or self.one_instance is None:
            return None
        return rev.probes[0].fwd_bwd_bytes - self.one_instance.fwd_bwd_bytes

    @property
    def assign_on_cpu(self) -> bool:
        """Whether the config already sends this many boxes' assignment to the CPU."""
        return 0 < self.gpu_assign_thr < self.instances

    def suggested_assign_thr(self) -> Optional[int]:
        """The most ground-truth boxes whose assignment stays below the rest of the batch-1 step (the
        assignment's peak is linear in the boxes between the 1- and the N-instance steps); None where the
        assignment does not set the peak or was not measured."""
        rev, one = self.reversible, self.one_instance
        if rev is None or one is None or one.assign_peak_bytes is None or rev.probes[0].assign_peak_bytes is None:
            return None
        top, outside = rev.probes[0].assign_peak_bytes, rev.probes[0].outside_assign_bytes
        if top <= outside or self.instances <= 1:
            return None
        per_box = (top - one.assign_peak_bytes) / (self.instances - 1)
        return max(1, int(1 + (outside - one.assign_peak_bytes) // per_box)) if per_box > 0 else None

    @property
    def reversible(self) -> Optional[ModePlan]:
        """The fully reversible measurements (all predictions start from them), if taken."""
        return next((m for m in self.modes if m.mode == "reversible" and m.measured), None)

    @property
    def settings(self) -> Dict[int, Dict[str, float]]:
        """``plain_segments`` setting -> ``kept`` (activation bytes per sample beyond the reversible
        step) and ``step_s`` (seconds of a batch-1 step on the measuring device)."""
        raw = self.reversible.probes[0].settings if self.reversible else {}
        if not raw:
            return {}
        base = raw["0"]["saved"]
        return {int(k): dict(kept=max(0.0, v["saved"] - base), step_s=v["step_s"]) for k, v in raw.items()}

    def best_setting(self, gpu_bytes: float, batch: int, context_gib: float = CONTEXT_GIB,
                     fragmentation: float = FRAGMENTATION) -> Optional[int]:
        """The setting that keeps the most activations and still fits ``batch`` in ``gpu_bytes``, or the
        fastest fitting one where keeping more did not measure faster; None if none fits."""
        rev = self.reversible
        fits = [k for k, s in sorted(self.settings.items())
                if rev.on_gpu(batch, s["kept"], context_gib, fragmentation, self.assign_on_cpu) <= gpu_bytes]
        if not fits:
            return None
        return min(fits, key=lambda k: (self.settings[k]["step_s"], -k)) if not self.time_falls else max(fits)

    @property
    def time_falls(self) -> bool:
        """Whether the measured step time falls (within 5 %) as each further setting keeps more."""
        times = [s["step_s"] for _, s in sorted(self.settings.items())]
        return all(b <= a * 1.05 for a, b in zip(times, times[1:]))


def _config_batch(cfg: Any) -> Tuple[int, bool]:
    loader = cfg.get("train_dataloader", {}) or {}
    scale = cfg.get("auto_scale_lr", None)
    return int(loader.get("batch_size", 1) or 1), isinstance(scale, dict) and "base_batch_size" in scale


def expected_seconds(config: str, shape: Tuple[int, int], modes: Sequence[str], cfg_options: Optional[Dict] = None,
                     startup_s: float = 10.0) -> float:
    """A rough wall time of :func:`make_plan`, from one training step of the model at half the input's
    height and width, scaled by area (a calibration, not a measurement of the plan)."""
    import torch

    cfg = load_config(config, cfg_options)
    if cfg.model.get("backbone", {}).get("init_cfg") is not None:
        cfg.model.backbone.init_cfg = None
    registry = importlib.import_module(f"{cfg.default_scope}.registry")
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        try:
            model = registry.MODELS.build(cfg.model).train()
        except Exception as err:  # noqa: BLE001  (mmengine wraps build errors)
            raise PlanError(f"the model of {config} does not build: {_one_line(_root_cause(err))}") from err
    small = (max(64, shape[0] // 2 // 32 * 32), max(64, shape[1] // 2 // 32 * 32))
    packed = _inputs(cfg, model, 1, small, "cpu")
    start = time.perf_counter()
    model.parse_losses(model(**model.data_preprocessor(packed, True), mode="loss"))[0].backward()
    step = (time.perf_counter() - start) * shape[0] * shape[1] / (small[0] * small[1])
    segments = model.backbone.rev_stack.budget_segments + 1 if hasattr(model.backbone, "rev_stack") else 0
    per_probe = startup_s + 4 * step  # warm-up, forward + backward, optimizer step; batch 2 doubles it
    total = 0.0
    for mode in modes:
        total += 3 * per_probe
        if mode == "budgets":  # one more process on CPU (timed without the peak probe)
            total += segments * 3 * step + per_probe
    return total


def make_plan(config: str, shape: Optional[Tuple[int, int]] = None, amp: bool = False,
              modes: Sequence[str] = MODES, device: str = "cpu", cfg_options: Optional[Dict[str, Any]] = None,
              ram_fraction: float = 0.6, threads: Optional[int] = None, log: Any = None,
              instances: int = BOXES_PER_IMAGE, instances_source: str = "assumed", mask_format: str = "bitmap"
              ) -> Plan:
    """Measure the config at batch 1 and 2 (fully reversible; ``'budgets'``: every ``plain_segments``
    setting at batch 1 too; ``'plain'``: plain mode at batch 1 and 2), each in a fresh process.

    What does not fit here is reported as not measured, with the reason: the measuring process may
    use at most ``ram_fraction`` of the memory available when it starts (CPU).

    Raises:
        PlanError: the config does not load or build, or has no training resolution.
    """
    cfg = load_config(config, cfg_options)
    if shape is None:
        h, w, how = training_shape(cfg)
    else:
        h, w, how = int(shape[0]), int(shape[1]), "--shape"
    batch, scalable = _config_batch(cfg)
    plans, missing = [], []
    for mode in ("reversible", "plain"):
        if mode == "reversible" and not {"reversible", "budgets"} & set(modes) or mode == "plain" and "plain" not in modes:
            continue
        mp = ModePlan(mode)
        plans.append(mp)
        for b in (1, 2):
            limit = int(available_ram_bytes() * ram_fraction) or None if device == "cpu" else None
            budgets = mode == "reversible" and b == 1 and "budgets" in modes
            # On CPU the peak probe's allocator policy slows steps that allocate more: the settings
            # are then counted and timed in a process of their own, without it.
            apart = budgets and device == "cpu"
            if log:
                log(f"measuring {mode} at batch {b}, {h}x{w}" + (" and every plain_segments setting" if budgets else "")
                    + (f" (may use {limit / GIB:.1f} GiB)" if limit else ""))
            try:
                mp.probes.append(probe_in_subprocess(config, mode, b, (h, w), amp, device, cfg_options, limit,
                                                     threads, budgets=budgets and not apart, instances=instances,
                                                     mask_format=mask_format))
                if apart:
                    timed = probe_in_subprocess(config, mode, b, (h, w), amp, device, cfg_options, limit, threads,
                                                budgets=True, peak=False, instances=instances, mask_format=mask_format)
                    mp.probes[-1].settings, mp.probes[-1].settings_note = timed.settings, timed.settings_note
                if mp.probes[-1].settings_note:
                    missing.append(mp.probes[-1].settings_note)
            except NotMeasured as err:
                where = f"this machine's available memory ({limit / GIB:.1f} GiB allowed)" if limit else device
                mp.skipped = f"not measured at batch {b}: {err}" + (
                    f"; it needs more than {where}" if "fit" in str(err) else "")
                missing.append(f"{mode}: {mp.skipped}")
                break
    if device == "cpu":
        missing.append("time on a GPU: the step times that choose between budget settings are CPU times here")
    plan = Plan(config=config, scope=cfg.default_scope, shape=(h, w), shape_source=how, amp=amp, device=device,
                batch=batch, auto_scale_lr=scalable, modes=plans, not_measured=missing,
                instances=instances if cfg.default_scope == "mmdet" else 0, instances_source=instances_source,
                gpu_assign_thr=float(((cfg.model.get("train_cfg") or {}).get("rpn") or {}).get("assigner", {})
                                     .get("gpu_assign_thr", -1)))
    if plan.instances > 1 and plan.reversible is not None:
        _measure_one_instance(plan, cfg_options, limit, threads, mask_format, log)
    return plan


def _measure_one_instance(plan: Plan, cfg_options: Optional[Dict[str, Any]], limit: Optional[int],
                          threads: Optional[int], mask_format: str, log: Any) -> None:
    """:attr:`Plan.one_instance`: the fully reversible batch-1 step with one instance per image."""
    if log:
        log("measuring reversible at batch 1 with 1 instance per image (the ground truth's share)")
    try:
        plan.one_instance = probe_in_subprocess(plan.config, "reversible", 1, plan.shape, plan.amp, plan.device,
                                                cfg_options, limit, threads, instances=1, mask_format=mask_format)
    except NotMeasured as err:
        plan.not_measured.append(f"the ground truth's share: {err}")


def render_plan(plan: Plan, gpu_gib: Sequence[float] = (24.0,), batches: Sequence[int] = BATCHES,
                context_gib: float = CONTEXT_GIB, fragmentation: float = FRAGMENTATION) -> str:
    """The plan as text: fixed costs, predictions, and per card the batch and setting to train with."""
    lines = [f"config: {plan.config} ({plan.scope}); its batch per device: {plan.batch}",
             f"input: {plan.shape[0]}x{plan.shape[1]} per sample ({plan.shape_source}); "
             f"precision: {_precision(plan)}; measured on {plan.device}"]
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
        rows += [(f"plain_segments={k}", rev, s["kept"]) for k, s in sorted(plan.settings.items()) if k]
    for name, m, kept in rows:
        lines.append(f"{'':<27}{name:<18} " + " ".join(
            f"{m.on_gpu(b, kept, context_gib, fragmentation, plan.assign_on_cpu) / GIB:>7.2f}" for b in batches))
    if plan.settings:
        lines.append("step time at batch 1 on the measuring device, by plain_segments: " + ", ".join(
            f"{k}: {s['step_s']:.2f} s" for k, s in sorted(plan.settings.items()))
            + ("" if plan.time_falls else "  (keeping more did not measure faster everywhere: the fastest fitting "
                                          "setting is recommended)"))
    lines += _ground_truth_lines(plan, gpu_gib, context_gib, fragmentation)
    config = plan.config
    for gib in gpu_gib:
        lines.append(f"{gib:g} GiB card:")
        if rev is None:
            lines.append("  no fully reversible measurement: nothing to predict from")
            continue
        card = gib * GIB
        top = rev.largest_batch(card, 0.0, context_gib, fragmentation, assign_on_cpu=plan.assign_on_cpu)
        scale = " --auto-scale-lr" if plan.auto_scale_lr else ""
        lines.append(f"  fully reversible, largest batch {top}" + (
            f": python tools/train.py {config} --cfg-options train_dataloader.batch_size={top}{scale}" if top else
            ": does not fit (not even batch 1)"))
        if plan.settings:
            k = plan.best_setting(card, plan.batch, context_gib, fragmentation)
            if k:
                pred = rev.on_gpu(plan.batch, plan.settings[k]["kept"], context_gib, fragmentation,
                                  plan.assign_on_cpu) / GIB
                why = "keeps the most activations that fit" if plan.time_falls else "is the fastest setting that fits"
                lines.append(f"  at the config's batch {plan.batch}: plain_segments={k} {why} "
                             f"({pred:.2f} GiB predicted): python tools/train.py {config} --cfg-options "
                             f"model.backbone.plain_segments={k}")
            elif k == 0:
                lines.append(f"  at the config's batch {plan.batch}: only fully reversible fits")
    for what in plan.not_measured:
        lines.append(f"not measured here: {what}")
    return "\n".join(lines)


def _ground_truth_lines(plan: Plan, gpu_gib: Sequence[float], context_gib: float, fragmentation: float
                        ) -> List[str]:
    """Detectors: the instances measured with, the ground truth's share of the step, and what
    ``gpu_assign_thr`` would change."""
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
    lines.append(f"  the anchor assignment (MaxIoUAssigner) peaks at {p.assign_peak_bytes / GIB:.3f} GiB, the rest of the "
                 f"step at {p.outside_assign_bytes / GIB:.3f} GiB {where}".rstrip())
    if plan.assign_on_cpu or thr is None:
        lines.append("  train_cfg.rpn.assigner.gpu_assign_thr: " + (
            "already moves this assignment to the CPU" if plan.assign_on_cpu else
            "would not help: the step's peak lies outside the assignment"))
        return lines
    gain = [(rev.on_gpu(b, 0.0, context_gib, fragmentation) - rev.on_gpu(b, 0.0, context_gib, fragmentation, True))
            / GIB for b in (1, 2)]
    cards = ", ".join(f"{g:g} GiB: batch {rev.largest_batch(g * GIB, 0.0, context_gib, fragmentation)} -> "
                      f"{rev.largest_batch(g * GIB, 0.0, context_gib, fragmentation, assign_on_cpu=True)}"
                      for g in gpu_gib)
    lines.append(f"  with train_cfg.rpn.assigner.gpu_assign_thr={thr} (images with more boxes are assigned on the "
                 f"CPU, slower) the prediction falls by {gain[0]:.2f} GiB at batch 1 and {gain[1]:.2f} GiB at "
                 f"batch 2; largest fully reversible batch {cards}: add --cfg-options "
                 f"model.train_cfg.rpn.assigner.gpu_assign_thr={thr}")
    return lines


def _precision(plan: Plan) -> str:
    if not plan.amp:
        return "fp32"
    if plan.device == "cpu":
        return ("autocast bfloat16 on CPU (assumed to take the same activation bytes as CUDA float16 "
                "autocast: an assumption)")
    return "autocast float16"


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
