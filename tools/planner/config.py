"""The planner's view of a config (loading it, its training resolution and batch, its model), and its errors."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ["PlanError", "NotMeasured", "load_config", "training_pipeline", "training_shape", "set_mode", "build_model",
           "one_line", "root_cause", "is_oom"]


class PlanError(RuntimeError):
    """The config cannot be planned: it does not load or build, or has no training resolution."""


class NotMeasured(RuntimeError):
    """A measurement could not be taken here (too little memory, unsupported precision)."""


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

    from revbifpn_mm.mm.compat import register_scope

    if not os.path.isfile(path):
        raise PlanError(f"config file not found: {path}")
    try:
        cfg = Config.fromfile(path)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    except Exception as err:  # noqa: BLE001  (mmengine raises many types)
        raise PlanError(f"config {path} does not load: {one_line(err)}") from err
    if "model" not in cfg:
        raise PlanError(f"config {path} has no 'model'")
    try:
        cfg.default_scope = register_scope(cfg)  # 'mmdet' where the config names none
    except (ValueError, ImportError) as err:
        raise PlanError(f"config {path}: {one_line(err)}") from err
    return cfg


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def training_pipeline(cfg: Any) -> List[Dict[str, Any]]:
    """The transforms of the training dataset (through dataset wrappers), else ``train_pipeline``."""
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
    for t in training_pipeline(cfg):
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
            ratio = max(t.get("ratio_range") or (1,))  # mmseg RandomResize: scale * max ratio
            sw, sh = (side * ratio for side in max(scales, key=lambda s: s[0] * s[1]))
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


def set_mode(cfg: Any, mode: str) -> None:
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


def build_model(cfg: Any, config: str, device: Any = "cpu") -> Any:
    """The config's model in its codebase's registry and scope, without pretrained weights, in train mode.

    Raises:
        PlanError: the model does not build.
        NotMeasured: it does not fit in the memory this process may use.
    """
    from bench.models import build

    if cfg.model.get("backbone", {}).get("init_cfg") is not None:
        cfg.model.backbone.init_cfg = None  # no checkpoint is needed to measure memory
    try:
        return build(cfg.model, cfg.default_scope).to(device).train()
    except Exception as err:  # noqa: BLE001  (mmengine wraps build errors)
        if is_oom(root_cause(err)):
            raise NotMeasured(f"the model does not fit in the memory this process may use on {device}") from err
        raise PlanError(f"the model of {config} does not build: {one_line(root_cause(err))}") from err


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA out of memory, CPU allocator or Python)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    # a library that cannot be mapped under the address-space limit fails its import
    return "can't allocate memory" in text or "out of memory" in text.lower() or (
        isinstance(err, ImportError) and "failed to map segment" in text)


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain (mmengine wraps build errors several times)."""
    seen = set()
    while id(err) not in seen and (err.__cause__ or err.__context__) is not None:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err
