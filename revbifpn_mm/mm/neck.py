"""``RevBiFPNNeck``: HRFPN's outputs at a fraction of its activation memory."""
from __future__ import annotations

import functools
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..models.heads import is_plain_conv2d, level_sum
from .compat import DropInArgumentError

__all__ = ["RevBiFPNNeck"]


@MODELS.register_module()
class RevBiFPNNeck(BaseModule):
    """Multi-scale neck that computes mmdet's ``HRFPN`` without its stride-4 concat.

    HRFPN upsamples every input level to stride 4, concatenates them (``sum(in_channels)`` channels:
    1472 for RevBiFPN-S3) and applies a 1x1 reduction conv. A 1x1 conv commutes with bilinear
    upsampling (both are linear, one over channels, one over pixels), so this neck splits the
    reduction weight ``W`` into per-level blocks ``W_i`` and computes::

        r = b + sum_i upsample_{2^i}(W_i * x_i)        (== conv_W(cat_i upsample(x_i)) + b)

    at each level's own resolution, then pools ``r`` into ``num_outs`` levels and applies a 3x3 conv
    per level, exactly as HRFPN. The parameters and their names are HRFPN's (``reduction_conv.conv``,
    ``fpn_convs.<i>.conv``), so an ``HRFPN`` state dict loads as it is, and the outputs equal HRFPN's
    up to float round-off; only the activation memory differs.

    The reduction runs as ``F.conv2d`` on the blocks of its weight, so forward hooks on
    ``reduction_conv`` do not fire (the 3x3 ``fpn_convs`` run through their modules). The split is
    valid only for a plain ``nn.Conv2d``: for another conv type of ``conv_cfg`` (e.g. ``'ConvWS'``,
    whose forward standardises the weight) the neck computes HRFPN's stride-4 concatenation and
    calls ``reduction_conv``, with a warning that the memory saving is off. Bad arguments where
    HRFPN asserts raise :class:`~revbifpn_mm.mm.compat.DropInArgumentError`, both a ``ValueError``
    and an ``AssertionError``.

    Args:
        in_channels: Channels of each input level (the backbone's ``out_channels``).
        out_channels: Channels of every output level. Defaults to 256.
        num_outs: Number of output levels (strides 4, 8, ..., 4 * 2^(num_outs-1)). Defaults to 5.
        pooling_type: ``'AVG'`` or ``'MAX'``, in any case (HRFPN pools by average for anything but
            ``'MAX'``; we refuse other values). Defaults to ``'AVG'``.
        conv_cfg: Conv config of the ConvModules, with HRFPN's meaning (see above). Defaults to None.
        norm_cfg: Accepted and, as in HRFPN (mmdet 3.3), not used: its convolutions have no norm, and
            neither have these (a warning says so). Defaults to None.
        with_cp: HRFPN's checkpointing: recompute the reduction *and* the 3x3 convolutions in the backward
            (less memory, more compute than ``recompute_sum`` alone). Defaults to False.
        stride: Stride of the 3x3 output convs (2 for one-stage heads on strides 8-128, as mmdet's HRNet
            FCOS configs). Defaults to 1.
        recompute_sum: In training, recompute the stride-4 sum ``r`` (the neck's largest tensor) from the
            inputs when the backward reaches the neck, instead of keeping it: a few 1x1 convolutions, under
            3 % of the neck's MACs; the 3x3 convolutions are not re-run (selective checkpointing). Gradients
            are bitwise those of ``False``. Eval mode (so that tracing tools see ordinary ops) and a
            training norm in the neck (it would update its statistics twice) run plain autograd.
            Defaults to True.
        lean: The earlier name of ``recompute_sum`` (a warning says so).
        init_cfg: Defaults to Caffe2Xavier on the convs (as HRFPN).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5,
                 pooling_type: str = "AVG", conv_cfg: Optional[Dict[str, Any]] = None,
                 norm_cfg: Optional[Dict[str, Any]] = None, with_cp: bool = False, stride: int = 1,
                 recompute_sum: bool = True, lean: Optional[bool] = None,
                 init_cfg: Optional[Dict[str, Any]] = dict(type="Caffe2Xavier", layer="Conv2d")) -> None:
        super().__init__(init_cfg)
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise DropInArgumentError(f"in_channels must be a list of channel counts (the backbone's "
                                      f"out_channels), got {in_channels!r}")
        pooling = pooling_type.upper() if isinstance(pooling_type, str) else pooling_type
        if pooling not in ("AVG", "MAX"):
            raise DropInArgumentError(f"pooling_type must be 'AVG' or 'MAX' (any case), got {pooling_type!r}")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        if norm_cfg is not None:
            warnings.warn(f"RevBiFPNNeck: norm_cfg={norm_cfg} is not used, as mmdet's HRFPN does not use it "
                          "(its convolutions have no norm); the neck computes HRFPN's outputs", stacklevel=2)
        self.reduction_conv = ConvModule(sum(in_channels), out_channels, kernel_size=1,
                                         conv_cfg=conv_cfg, act_cfg=None)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, kernel_size=3, padding=1, stride=stride,
                       conv_cfg=conv_cfg, act_cfg=None) for _ in range(num_outs))
        self.pooling = F.max_pool2d if pooling == "MAX" else F.avg_pool2d
        self.split_weight = is_plain_conv2d(self.reduction_conv.conv)
        if not self.split_weight:
            warnings.warn(f"RevBiFPNNeck: conv_cfg={conv_cfg} builds {type(self.reduction_conv.conv).__name__}, "
                          "not a plain nn.Conv2d, so the reduction is computed as HRFPN does (stride-4 "
                          "concatenation, then reduction_conv), without the memory saving", stacklevel=2)
        if lean is not None:
            warnings.warn("RevBiFPNNeck: lean= is now called recompute_sum=", FutureWarning, stacklevel=2)
            recompute_sum = lean
        self.recompute_sum = bool(recompute_sum)
        self.with_cp = bool(with_cp)

    def _check(self, inputs: Sequence[Tensor]) -> None:
        got = [int(x.shape[1]) for x in inputs]
        if len(inputs) != self.num_ins or got != self.in_channels:
            raise DropInArgumentError(
                f"RevBiFPNNeck got {len(inputs)} inputs with channels {got}, but in_channels="
                f"{self.in_channels}: set neck.in_channels to the backbone's output channels "
                "(e.g. RevBiFPN arch 's4' gives [192, 256, 512, 1280])")
        base = inputs[0].shape[-2:]
        for i, x in enumerate(inputs[1:], 1):
            if (x.shape[-2] << i, x.shape[-1] << i) != tuple(base):
                raise ValueError(f"RevBiFPNNeck input {i} has size {tuple(x.shape[-2:])}, expected "
                                 f"{tuple(base)} / {2 ** i}; pad images to a multiple of 32")

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Return ``num_outs`` maps with ``out_channels`` channels (strides ``4 * stride * 2**i``)."""
        self._check(inputs)
        recompute = self.recompute_sum or self.with_cp
        norm_trains = any(isinstance(m, _BatchNorm) and m.training for m in self.modules())
        if not (self.training and torch.is_grad_enabled() and recompute) or norm_trains:
            return self._forward(*inputs)
        return checkpoint(self._forward, *inputs, use_reentrant=False,
                          **({} if self.with_cp else dict(context_fn=_keep_output_convs)))

    def _reduce(self, inputs: Sequence[Tensor]) -> Tensor:
        """``reduction_conv(cat_i upsample(x_i))``: split per level for a plain conv, else as HRFPN."""
        if not self.split_weight:
            ups = [x if i == 0 else F.interpolate(x, scale_factor=2 ** i, mode="bilinear")
                   for i, x in enumerate(inputs)]
            return self.reduction_conv(torch.cat(ups, dim=1))
        conv = self.reduction_conv.conv
        out = level_sum(inputs, torch.split(conv.weight, self.in_channels, dim=1))
        if conv.bias is not None:
            out = out + conv.bias.view(1, -1, 1, 1)
        if self.reduction_conv.with_norm:
            out = self.reduction_conv.norm(out)
        return out

    def _forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        out = self._reduce(inputs)
        outs: List[Tensor] = [out] + [self.pooling(out, kernel_size=2 ** i, stride=2 ** i)
                                      for i in range(1, self.num_outs)]
        return tuple(conv_i(o) for conv_i, o in zip(self.fpn_convs, outs))


def _save_spatial_convs(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective-checkpoint policy: keep the outputs of the spatial (3x3) convolutions, so
    the backward re-runs only the cheap 1x1 reduction, upsampling and pooling."""
    if op is torch.ops.aten.convolution.default and args[1].shape[-1] > 1:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_keep_output_convs = functools.partial(create_selective_checkpoint_contexts, _save_spatial_convs)
