"""RevBiFPN as an MMDetection / MMSegmentation backbone (registered as ``'RevBiFPN'``)."""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.registry import MODELS, DefaultScope
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.pretrained import CheckpointDownloadError, fetch_checkpoint, load_official_checkpoint, official_sha256
from ..models.revbifpn import RevBiFPN as _RevBiFPNNet

__all__ = ["RevBiFPNBackbone", "config_advice", "scope_norm_eval"]


@MODELS.register_module(name="RevBiFPN")
class RevBiFPNBackbone(_RevBiFPNNet, BaseModule):
    """RevBiFPN backbone for mmdet/mmseg (`arXiv:2206.14098 <https://arxiv.org/abs/2206.14098>`_).

    By default this is the paper's detection backbone: the reversible trunk plus the per-scale output
    MBConvs, returning four maps with ``arch`` ``out_channels`` at strides 4, 8, 16, 32 (S4: 34,454,352
    parameters). Parameter names equal those of the official checkpoints, so
    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads the released ImageNet ``.pth.tar`` files.

    Stages (for ``frozen_stages``): stage ``k`` (``1 <= k <= L``) is layer ``k`` of the trunk, its
    two reversible block groups and its RevSilo (``rev_stack.{3k-2,3k-1,3k}``); stage ``L + 1`` is
    the output MBConvs (``rev_stack.recomp_op``). The stem (stage 0) has no parameters. ``L`` is 5
    for S0-S2, 6 for S3, 7 for S4/S5 and 8 for S6.

    Args:
        arch: ``'s0'`` ... ``'s6'`` or an arch dict. Defaults to ``'s4'``.
        out_indices: Which of the four scales to return. Defaults to ``(0, 1, 2, 3)``.
        out_type: ``'neck'`` (trunk + output MBConvs, channels ``out_channels``; the
            paper's setting) or ``'trunk'`` (raw trunk outputs, channels ``channels``).
        frozen_stages: Stages ``1..frozen_stages`` are frozen (``requires_grad=False``, their
            BatchNorms in eval mode); ``-1`` freezes nothing.
        norm_cfg: Normalisation config, BN eps 1e-3 as in the official network (mmcv's: 1e-5): torch
            BatchNorms (``'BN'``, ``'SyncBN'``, ...) or ``'GN'`` with ``num_groups``; other types raise a
            ``ValueError`` (docs/design.md, *Normalisation layers*).
        norm_eval: Keep every BatchNorm in eval mode during training. ``None`` (default): as the HRNet of
            the registry scope it is built in (mmengine's current ``DefaultScope``, set from
            ``default_scope``): ``True`` under ``'mmdet'`` and scopes whose registry descends from
            mmdet's, ``False`` under ``'mmseg'`` and with no scope.
        drop_path_rate: Maximum stochastic-depth rate (default: the arch's value).
        memory_mode, stream_dtype, plain_segments, compile_transforms: The run policy,
            :class:`revbifpn_mm.core.RunPolicy` (each field is documented there): fully
            reversible by default; ``plain_segments=n`` keeps the activations of the last ``n``
            segments (the output MBConvs are the last), trading memory for the recomputation.
        with_cp, pretrained: Keys of the HRNet / ResNet configs users start from: ``with_cp=True``
            is refused (the trunk is reversible: nothing to checkpoint) and so is a ``pretrained``
            path (use ``init_cfg``); both errors name the fix.
        init_cfg: ``dict(type='Pretrained', checkpoint=URL_OR_PATH[, prefix=...][, sha256=...])`` loads an
            official or converted checkpoint (see :meth:`init_weights`); otherwise the official initialisation.
    """

    def __init__(self, arch: Union[str, Dict[str, Any]] = "s4", out_indices: Sequence[int] = (0, 1, 2, 3),
                 out_type: str = "neck", frozen_stages: int = -1, norm_cfg: Optional[Dict[str, Any]] = None,
                 norm_eval: Optional[bool] = None, drop_path_rate: Optional[float] = None,
                 memory_mode: str = "reversible", stream_dtype: Optional[str] = "auto", plain_segments: int = 0,
                 compile_transforms: bool = False, init_cfg: Optional[Dict[str, Any]] = None,
                 with_cp: bool = False, pretrained: Optional[str] = None, **removed: Any) -> None:
        _refuse_removed_keys(removed)
        if with_cp:
            raise ValueError("RevBiFPN has no with_cp: its reversible trunk already keeps only its outputs for "
                             "the backward (what with_cp approximates for HRNet / ResNet). Drop with_cp; to trade "
                             "memory back for speed use plain_segments=N (see revbifpn_mm.core.RunPolicy)")
        if pretrained is not None:
            raise ValueError(f"RevBiFPN takes its weights from init_cfg, not pretrained={pretrained!r}: use "
                             f"init_cfg=dict(type='Pretrained', checkpoint={pretrained!r})")
        if out_type not in ("neck", "trunk"):
            raise ValueError(f"out_type must be 'neck' or 'trunk', got {out_type!r}")
        norm_cfg = _checked_norm_cfg(norm_cfg or dict(type="BN", momentum=0.1, requires_grad=True))
        super().__init__(arch=arch, num_classes=0, drop_path_rate=drop_path_rate, with_neck=out_type == "neck",
                         norm_layer=functools.partial(_build_checked_norm, norm_cfg),
                         memory_mode=memory_mode, stream_dtype=stream_dtype,
                         plain_segments=plain_segments, compile_transforms=compile_transforms)
        self.init_cfg = init_cfg
        self.out_type = out_type
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(not 0 <= i < 4 for i in self.out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of (0, 1, 2, 3), got {out_indices}")
        self.num_stages = self.num_layers + (1 if self.with_neck else 0)
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f"frozen_stages must be in [-1, {self.num_stages}] for arch "
                             f"{self.arch['name']!r} (L={self.num_layers} layers"
                             f"{' + output MBConvs' if self.with_neck else ''}), got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = scope_norm_eval() if norm_eval is None else bool(norm_eval)
        self.out_channels = tuple(self.out_channels[i] for i in self.out_indices)
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        """Freeze stages ``1..frozen_stages`` (the class docstring says which modules each one is)."""
        for k in range(1, self.frozen_stages + 1):
            names = ["recomp_op"] if k > self.num_layers else [str(3 * k - d) for d in (2, 1, 0)]
            for mod in map(self.rev_stack.get_submodule, names):
                mod.eval()
                for p in mod.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "RevBiFPNBackbone":
        """Set train mode, then re-apply ``frozen_stages`` and ``norm_eval``."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:
        """Load ``init_cfg``'s ``Pretrained`` checkpoint (official layout) or keep the official init.

        ``checkpoint`` is a local path or an ``http(s)://`` URL, downloaded once into the torch hub cache and
        checked against its SHA-256 on every use: the published one of an official URL, else ``init_cfg``'s
        optional ``sha256`` (which checks a local path too). Under ``torch.distributed`` rank 0 downloads
        first. The loader is :func:`revbifpn_mm.models.pretrained.load_official_checkpoint`.
        """
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get("type") == "Pretrained"):
            super().init_weights()
            return
        logger = MMLogger.get_current_instance()
        ckpt = str(cfg.get("checkpoint") or "")
        if not ckpt:
            raise ValueError("init_cfg type='Pretrained' needs a 'checkpoint' path or URL")
        if ckpt.startswith(("http://", "https://")) and cfg.get("sha256") is None and official_sha256(ckpt) is None:
            logger.warning(f"RevBiFPN: {ckpt} is not an official checkpoint URL and init_cfg has no "
                           "sha256: the downloaded file is used unverified")
        with config_advice():
            res = load_official_checkpoint(self, ckpt, strict=False, prefix=cfg.get("prefix"),
                                           sha256=cfg.get("sha256"), fetch=_fetch_rank0_first)
        logger.info(f"RevBiFPN: loaded {ckpt} ({len(self.state_dict()) - len(res.missing_keys)} tensors; "
                    f"skipped {len(res.skipped_keys)} head keys)")
        for what, keys in (("missing", res.missing_keys), ("unexpected", res.unexpected_keys)):
            if keys:
                logger.warning(f"RevBiFPN: {what} keys in {ckpt}: {keys}")
        self._is_init = True

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:  # type: ignore[override]
        """Return the feature maps selected by ``out_indices``.

        Any input height and width of at least 32 is accepted, as HRNet accepts them: a size that is not a
        multiple of 32 is zero-padded at the bottom and right to the next multiple (what mmdet's and mmseg's
        data preprocessors do with ``pad_size_divisor=32``), and each output of stride ``s`` is cropped to
        ``ceil(H / s) x ceil(W / s)``, HRNet's shape. Multiples of 32 run unchanged (no copy).
        """
        d = self.size_divisibility
        if not (isinstance(x, Tensor) and x.dim() == 4 and (x.shape[-2] % d or x.shape[-1] % d)):
            feats = self.forward_features(x)  # the exact path (and the input checks' messages)
            return tuple(feats[i] for i in self.out_indices)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h < d or w < d:
            raise ValueError(f"RevBiFPN needs inputs of at least {d}x{d} pixels (its coarsest output has "
                             f"stride {d}), got {h}x{w}: resize the images (e.g. the pipeline's Resize scale)")
        feats = self.forward_features(F.pad(x, (0, -w % d, 0, -h % d)))
        # the top-left ceil(h / s) x ceil(w / s) of each output, contiguous as HRNet's outputs are
        return tuple(feats[i][..., :math.ceil(h / (4 << i)), :math.ceil(w / (4 << i))].contiguous()
                     for i in self.out_indices)


_REMOVED_KEYS = {
    "num_ext_layers": "give arch a dict instead (revbifpn_mm.models.ARCH_SETTINGS['s3'] with num_ext_layers "
                      "changed)",
    "check_finite": "drop it (mmdet's CheckInvalidLossHook reports a non-finite loss)",
    "lean_recompute": "drop it (both settings give bitwise the same gradients, the default in less memory); "
                      "experiments set it on the built model with backbone.set_policy(lean_recompute=...)",
    "plain_from": "drop it (plain_segments counts from the output, where keeping pays most); experiments set it "
                  "on the built model with backbone.set_policy(plain_from=...)",
}


def _refuse_removed_keys(keys: Dict[str, Any]) -> None:
    """A clear error for the keys a config may still carry from an older release, or misspell."""
    for key in keys:
        if key in _REMOVED_KEYS:
            raise ValueError(f"RevBiFPN backbone: {key!r} is no longer a config key: {_REMOVED_KEYS[key]}")
    if keys:
        known = [k for k in inspect.signature(RevBiFPNBackbone.__init__).parameters if k not in ("self", "removed")]
        raise TypeError(f"RevBiFPN backbone got unexpected keys {sorted(keys)}; it takes {', '.join(known)}")


#: ``norm_eval`` default of each codebase's ``HRNet`` backbone (mmdet 3.3, mmseg 1.2).
HRNET_NORM_EVAL = {"mmdet": True, "mmseg": False}


def scope_norm_eval() -> bool:
    """``norm_eval`` of the current scope's HRNet: the first of the scope and its registry's parents
    (e.g. mmyolo -> mmdet) listed in :data:`HRNET_NORM_EVAL`; False with no scope or none listed."""
    scope = DefaultScope.get_current_instance()
    if scope is None:
        return False
    registry = MODELS._search_child(scope.scope_name)
    names = [scope.scope_name]
    while registry is not None:
        names.append(registry.scope)
        registry = registry.parent
    return next((HRNET_NORM_EVAL[n] for n in names if n in HRNET_NORM_EVAL), False)


@contextlib.contextmanager
def config_advice() -> Iterator[None]:
    """Re-raise a missing or undownloadable checkpoint with the config keys that fix it (mmdet / mmseg)."""
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}. In an mmdet/mmseg config: --cfg-options model.backbone.init_cfg.checkpoint="
                                "URL_OR_PATH, or train from scratch with model.backbone.init_cfg=None (a whole trained "
                                "detector or segmentor is loaded with load_from=PATH instead)") from err
    except CheckpointDownloadError as err:
        raise CheckpointDownloadError(f"{err} (in an mmdet/mmseg config: --cfg-options "
                                      "model.backbone.init_cfg.checkpoint=PATH)") from err


def _fetch_rank0_first(url: str, sha256: Optional[str]) -> str:
    """:func:`fetch_checkpoint` on rank 0, then on the other ranks; rank 0 reaches the barrier even when
    its fetch fails, so the others never hang (they then try themselves and raise the same clear error)."""
    if get_dist_info()[0] == 0:  # rank 0 (also without torch.distributed, where barrier does nothing)
        try:
            return fetch_checkpoint(url, sha256)
        finally:
            barrier()
    barrier()
    return fetch_checkpoint(url, sha256)


def _checked_norm_cfg(norm_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Refuse, before anything is built, a ``norm_cfg`` that RevBiFPN cannot train correctly (docs/design.md);
    return it with eps 1e-3 (the official BN's) as its default."""
    if not isinstance(norm_cfg, dict) or "type" not in norm_cfg:
        raise ValueError(f"norm_cfg must be a dict with a 'type' (e.g. dict(type='BN')), got {norm_cfg!r}")
    kind = norm_cfg["type"]
    if kind == "MMSyncBN" or (isinstance(kind, type) and kind.__name__ == "SyncBatchNorm"
                              and kind.__module__.split(".")[0] == "mmcv"):
        raise ValueError("norm_cfg type 'MMSyncBN' (mmcv's SyncBatchNorm) is not supported by RevBiFPN: not a "
                         "torch BatchNorm, the reversible backward would update its running statistics twice per "
                         "step and norm_eval / stream_dtype='auto' would ignore it. Fix: use "
                         "norm_cfg=dict(type='SyncBN', ...) (torch's SyncBatchNorm), or 'BN' for one process")
    if (kind == "GN" or kind is nn.GroupNorm) and "num_groups" not in norm_cfg:
        raise ValueError("norm_cfg type 'GN' needs num_groups, e.g. dict(type='GN', num_groups=8) (8 divides the "
                         "channel counts of every RevBiFPN arch)")
    return {"eps": 1e-3, **norm_cfg}


def _build_checked_norm(norm_cfg: Dict[str, Any], num_features: int) -> nn.Module:
    """``build_norm_layer(norm_cfg, num_features)``, refusing all but torch's BatchNorms and GroupNorm."""
    kind = norm_cfg["type"]
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", repr(kind))
    try:
        layer = build_norm_layer(norm_cfg, num_features)[1]
    except ValueError as err:
        if "num_groups" in norm_cfg:
            raise ValueError(f"norm_cfg {name!r} with num_groups={norm_cfg['num_groups']}: a RevBiFPN layer has "
                             f"{num_features} channels, which num_groups does not divide ({err}). Fix: "
                             "num_groups=8 (or 4, 2, 1) divides the channel counts of every arch") from err
        raise
    if isinstance(layer, (_BatchNorm, nn.GroupNorm)):
        return layer
    if isinstance(layer, nn.LayerNorm):
        raise ValueError(f"norm_cfg type {name!r} builds nn.LayerNorm({num_features}), which normalises the last "
                         "axis (the width) of RevBiFPN's NCHW feature maps, not the channels. Fix: "
                         "norm_cfg=dict(type='GN', num_groups=1) normalises each sample over (C, H, W); "
                         "or use 'BN' / 'SyncBN'")
    raise ValueError(f"norm_cfg type {name!r} builds {type(layer).__name__}, which RevBiFPN does not support: the "
                     "reversible backward handles torch BatchNorms ('BN', 'SyncBN', ...) and GroupNorm ('GN') only")
