"""``LeanFCNHead``: mmseg's HRNet-style ``FCNHead`` at a fraction of its activation memory.

Imports mmseg, so :mod:`revbifpn_mm.mm` imports this module only when mmseg is installed.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Sequence

from mmengine.registry import MODELS
from mmseg.models.decode_heads.fcn_head import FCNHead
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.heads import is_plain_conv2d, lean_fcn_forward

__all__ = ["LeanFCNHead"]


@MODELS.register_module()
class LeanFCNHead(FCNHead):
    """mmseg's HRNet FCN head (``FCNHead`` with ``resize_concat``, one 1x1 ConvModule) made lean.

    ``FCNHead`` in the HRNet setting resizes all input levels to stride 4, concatenates them
    (``sum(in_channels)`` channels: 2240 for RevBiFPN-S4) and applies a 1x1 conv + BN + ReLU, dropout
    and the 1x1 classifier, keeping three full-width stride-4 tensors for backward (four with dropout).
    This head computes the same function one block of ``chunk_channels`` channels at a time
    (:func:`~revbifpn_mm.models.heads.lean_fcn_forward`; the math is in :mod:`revbifpn_mm.models.heads`):
    no full-width stride-4 tensor is ever built, and the backward keeps only the inputs and recomputes
    each block.

    The parameters, buffers and their names are ``FCNHead``'s (``convs.0.conv``, ``convs.0.bn``,
    ``conv_seg``), so state dicts load both ways, and the outputs equal ``FCNHead``'s up to float
    round-off, in train and eval mode, with SyncBN, dropout (the same mask as ``nn.Dropout2d`` for the
    same RNG state) and the BN running statistics updated once per forward.

    The lean computation holds for a plain ``nn.Conv2d`` (``conv_cfg=None``), a torch BatchNorm or
    SyncBatchNorm (or no norm) and a ReLU (or none), in ``FCNHead``'s order. Any other ``conv_cfg``
    (e.g. ``'ConvWS'``), ``norm_cfg`` (e.g. ``'GN'``) or ``act_cfg`` builds the same modules, and the
    head then runs ``FCNHead.forward`` itself, with a warning that the memory saving is off.

    Args:
        num_convs, kernel_size, concat_input, dilation: Must be 1, 1, False, 1 (the HRNet FCN setting).
        chunk_channels: Channels computed at once (forward and backward). Defaults to 256.
        **kwargs: ``BaseDecodeHead``'s arguments (``in_channels``, ``channels``, ``num_classes``, ``in_index``,
            ``input_transform`` ('resize_concat' or None), ``norm_cfg``, ``act_cfg``, ``conv_cfg``, ...).
    """

    def __init__(self, num_convs: int = 1, kernel_size: int = 1, concat_input: bool = False,
                 dilation: int = 1, chunk_channels: int = 256, **kwargs: Any) -> None:
        wrong = {k: v for k, v, ok in (("num_convs", num_convs, 1), ("kernel_size", kernel_size, 1),
                                        ("concat_input", concat_input, False), ("dilation", dilation, 1))
                 if v != ok}
        if wrong:
            raise ValueError(f"LeanFCNHead supports only the HRNet FCN setting num_convs=1, kernel_size=1, "
                             f"concat_input=False, dilation=1; got {wrong}. Use type='FCNHead' for "
                             "other settings")
        if kwargs.get("input_transform") not in ("resize_concat", None):
            raise ValueError("LeanFCNHead needs input_transform='resize_concat' (or None for one input), "
                             f"got {kwargs.get('input_transform')!r}")
        if not isinstance(chunk_channels, int) or chunk_channels < 1:
            raise ValueError(f"chunk_channels must be a positive int, got {chunk_channels!r}")
        super().__init__(num_convs=1, kernel_size=1, concat_input=False, dilation=1, **kwargs)
        self.chunk_channels = chunk_channels
        why_not = _why_not_lean(self.convs[0])
        if why_not is not None:
            warnings.warn(f"LeanFCNHead: {why_not}, which the lean computation does not cover: running "
                          "FCNHead's own forward (same outputs, no memory saving)", stacklevel=2)
        self._level_channels: List[int] = (list(kwargs["in_channels"]) if self.input_transform == "resize_concat"
                                           else [int(self.in_channels)])

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Segmentation logits at the first input level's resolution, as ``FCNHead.forward``."""
        feats = ([inputs[i] for i in self.in_index] if self.input_transform == "resize_concat"
                 else [inputs[self.in_index]])
        got = [int(x.shape[1]) for x in feats]
        if got != self._level_channels:
            raise ValueError(f"LeanFCNHead got inputs with channels {got}, but in_channels="
                             f"{self._level_channels}: set decode_head.in_channels to the backbone's "
                             "out_channels (e.g. RevBiFPN 's4' gives [192, 256, 512, 1280])")
        if _why_not_lean(self.convs[0]) is not None:  # checked per call: norms may be converted after build
            return super().forward(inputs)
        module = self.convs[0]
        return lean_fcn_forward(feats, module.conv, module.norm if module.with_norm else None,
                                module.with_activation, self.dropout, self.conv_seg, self.chunk_channels,
                                self.align_corners)


def _why_not_lean(module: nn.Module) -> Optional[str]:
    """Why ``lean_fcn_forward`` would not compute this ConvModule's function, or None if it does (it needs
    the forwards of ``nn.Conv2d``, torch's BatchNorm / SyncBatchNorm and ReLU, in that order)."""
    conv = module.conv
    if not is_plain_conv2d(conv) or conv.groups != 1:
        return f"the conv is {type(conv).__name__} (groups={conv.groups}), not a plain nn.Conv2d"
    norm = module.norm if module.with_norm else None
    torch_bn_forwards = (_BatchNorm.forward, nn.SyncBatchNorm.forward)
    if norm is not None and not (isinstance(norm, _BatchNorm) and type(norm).forward in torch_bn_forwards):
        return f"the norm is {type(norm).__name__}, not a torch BatchNorm / SyncBatchNorm"
    if module.with_activation and type(module.activate) is not nn.ReLU:
        return f"the activation is {type(module.activate).__name__}, not ReLU"
    if tuple(module.order) != ("conv", "norm", "act"):
        return f"the ConvModule order is {module.order}, not ('conv', 'norm', 'act')"
    return None
