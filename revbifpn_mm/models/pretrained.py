"""Loading the official RevBiFPN checkpoints (``revbifpn_s#.pth.tar``).

The released files are raw state dicts whose keys are exactly the parameter names
of :class:`~revbifpn_mm.models.RevBiFPN` (``rev_stack.*``, ``head.*``), so no key
conversion is needed. Wrapped (``{'state_dict': ...}``) and prefixed
(``module.``, ``backbone.``) variants are accepted too.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, NamedTuple, Union

import torch
from torch import Tensor, nn

__all__ = ["load_official_checkpoint", "read_state_dict", "extract_state_dict", "LoadResult"]

_PREFIXES = ("module.", "backbone.", "model.")


class LoadResult(NamedTuple):
    """Keys that were expected but absent, present but unused, and skipped on purpose."""

    missing_keys: List[str]
    unexpected_keys: List[str]
    skipped_keys: List[str]


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """Read a checkpoint file with ``weights_only=True`` and clear errors.

    Raises:
        FileNotFoundError: The file does not exist (the message says where to get one).
        RuntimeError: The file exists but cannot be read (truncated or not a checkpoint).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"RevBiFPN checkpoint not found: {path!r}. Download the official ImageNet weights "
            "(revbifpn_s0.pth.tar ... revbifpn_s6.pth.tar, from the RevBiFPN release) and pass "
            "their path, or build the model without a checkpoint.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(
            f"could not read RevBiFPN checkpoint {path!r} ({type(err).__name__}: {err}); the file "
            "is truncated or not a PyTorch checkpoint: download it again") from err
    return extract_state_dict(obj, source=path)


def extract_state_dict(obj: object, source: str = "checkpoint") -> Dict[str, Tensor]:
    """Unwrap ``{'state_dict': ...}`` / ``{'model': ...}`` and strip common prefixes."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RuntimeError(f"{source} does not contain a state dict of tensors")
    sd = dict(obj)
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_official_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Tensor]],
                             strict: bool = True) -> LoadResult:
    """Load an official RevBiFPN checkpoint into ``model``.

    Keys of parts the model does not have are skipped (``head.*`` for a head-less
    model, ``rev_stack.recomp_op.*`` for a model without neck). With ``strict`` every
    remaining key must match in name and shape.

    Args:
        model: A :class:`~revbifpn_mm.models.RevBiFPN`.
        checkpoint: Path to a ``.pth.tar`` file or a state dict.
        strict: Raise on missing/unexpected keys. Shape mismatches always raise.
            Defaults to True.

    Returns:
        The :class:`LoadResult` (empty lists when everything matched).

    Raises:
        ValueError: Shapes or keys do not match (e.g. a checkpoint of another arch).
    """
    sd = read_state_dict(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) \
        else extract_state_dict(checkpoint)
    own = model.state_dict()
    skip_prefixes = []
    if getattr(model, "head", None) is None:
        skip_prefixes.append("head.")
    if not getattr(model, "with_neck", True):
        skip_prefixes.append("rev_stack.recomp_op.")
    skipped = [k for k in sd if k.startswith(tuple(skip_prefixes))] if skip_prefixes else []
    sd = {k: v for k, v in sd.items() if k not in set(skipped)}
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    arch = getattr(model, "arch", {}).get("name", "?")
    if mismatched or (strict and (missing or unexpected)):  # a shape mismatch is never silently skipped
        detail = "; ".join(mismatched[:3] + [f"missing {k}" for k in missing[:3]] +
                           [f"unexpected {k}" for k in unexpected[:3]])
        raise ValueError(
            f"checkpoint does not fit RevBiFPN arch {arch!r}: {len(mismatched)} shape mismatches, "
            f"{len(missing)} missing and {len(unexpected)} unexpected keys ({detail}). "
            "Is it a checkpoint of another RevBiFPN size?")
    loadable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(loadable, strict=False)
    return LoadResult(missing, unexpected, skipped)
