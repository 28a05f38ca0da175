"""Building blocks of RevBiFPN: Conv-Norm-Act, squeeze-excite, MBConv, drop path."""
from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..core.state import is_recomputing

__all__ = ["NormLayer", "default_norm_layer", "ConvNormAct", "SqueezeExcite", "MBConv", "drop_path"]

NormLayer = Callable[[int], nn.Module]
#: BatchNorm as in the official network: eps 1e-3, momentum 0.1.
default_norm_layer: NormLayer = functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.1)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: multiply by a per-sample mask ``Bernoulli(1-p) / (1-p)``."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class ConvNormAct(nn.Module):
    """``conv(k, stride, groups, no bias) -> norm -> optional Hardswish``.

    Children ``conv`` and ``norm`` (official key layout).

    Attributes:
        fold_frozen_bn: ``True``, ``False`` or ``'auto'`` (fold on CPU only). When it
            applies and ``norm`` is a BatchNorm in eval mode that uses its running
            statistics (frozen BN, ``norm_eval=True``, or inference), the BN is folded into
            the convolution on every call: with ``s = gamma / sqrt(running_var + eps)``,
            ``norm(conv(x, W)) = conv(x, W * s) + (beta - running_mean * s)``. The result
            equals the unfolded one up to float rounding; gradients reach ``W``, ``gamma``
            and ``beta`` through the folding. It saves one pass over the conv's output
            forward and one backward, for a few more (tiny) kernels. Set by the model
            (``RevBiFPN(fold_frozen_bn=...)``), not by hand.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act: bool = True, norm_layer: NormLayer = default_norm_layer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.norm = norm_layer(out_chs)
        self.act = nn.Hardswish() if act else nn.Identity()
        self.fold_frozen_bn: Union[bool, str] = False

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.norm_act(self.conv_out(x))

    def _folds(self, x: Tensor) -> bool:
        fold, n = self.fold_frozen_bn, self.norm
        if fold is False or (fold == "auto" and x.device.type != "cpu"):
            return False
        return (isinstance(n, nn.modules.batchnorm._BatchNorm) and not n.training
                and n.running_mean is not None and n.running_var is not None)

    def conv_out(self, x: Tensor) -> Tensor:
        """The convolution, with the frozen BN folded in when :attr:`fold_frozen_bn` applies."""
        if not self._folds(x):
            return self.conv(x)
        n, c = self.norm, self.conv
        assert n.running_var is not None and n.running_mean is not None
        scale = torch.rsqrt(n.running_var + n.eps)
        if n.weight is not None:
            scale = scale * n.weight
        shift = -n.running_mean * scale
        if n.bias is not None:
            shift = shift + n.bias
        w = c.weight * scale.to(c.weight.dtype).view(-1, 1, 1, 1)
        return F.conv2d(x, w, shift.to(c.weight.dtype), c.stride, c.padding, c.dilation, c.groups)

    def norm_act(self, x: Tensor, lean: bool = False) -> Tensor:
        """``act(norm(x))`` (the layer after :meth:`conv_out`; only ``act`` when the norm was
        folded into the convolution). With ``lean`` the pair is checkpointed: only ``x`` is
        kept for backward, the norm output is recomputed."""
        if self._folds(x):
            return self.act(x)
        if lean:
            return checkpoint(self.norm_act, x, use_reentrant=False)
        return self.act(self.norm(x))


class SqueezeExcite(nn.Module):
    """``x * hardsigmoid(conv_b(hardswish(conv_a(mean_hw(x)))))``; child ``se`` (official layout)."""

    def __init__(self, chs: int, se_chs: int) -> None:
        super().__init__()
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(chs, se_chs, 1), nn.Hardswish(),
                                nn.Conv2d(se_chs, chs, 1), nn.Hardsigmoid())

    def forward(self, x: Tensor, lean: bool = False) -> Tensor:
        """``x * gate(x)``. With ``lean`` the gate's gradient is reduced in channel
        chunks, without a full-size ``grad * x`` temporary (see :class:`_ChannelScale`)."""
        gate = self.se(x)
        if lean and x.dim() == 4 and gate.shape[2:] == (1, 1):
            return _ChannelScale.apply(x, gate)
        return x * gate


class _ChannelScale(torch.autograd.Function):
    """``y = x * s`` for ``x`` of shape (N, C, H, W) and a per-channel ``s`` (N, C, 1, 1).

    Backward: ``dx = dy * s`` and ``ds[n, c] = sum_hw dy[n, c] * x[n, c]``. autograd's
    ``mul`` backward forms the full-size product ``dy * x`` before reducing it; here it is
    formed and reduced in 8 channel chunks, so the temporary is an eighth of a map. Each
    ``(n, c)`` sum runs over the same elements in the same order, so the result is bitwise
    autograd's (checked by the tests).
    """

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, s = ctx.saved_tensors
        dx = ds = None
        if ctx.needs_input_grad[1]:
            ds = torch.cat([(d * xc).sum((2, 3), keepdim=True)
                            for d, xc in zip(dy.tensor_split(8, dim=1), x.tensor_split(8, dim=1))], dim=1)
            ds = ds.to(s.dtype)
        if ctx.needs_input_grad[0]:
            dx = (dy * s).to(x.dtype)
        return dx, ds


class MBConv(nn.Module):
    """Inverted-residual block without identity skip (residuals live in the couplings).

    ``[1x1 expand + BN + hswish] -> kxk depthwise (stride) + BN + hswish -> [SE]
    -> 1x1 project + BN -> drop path``.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Depthwise kernel (odd).
        stride: Depthwise stride.
        expand_ratio: ``Ce = int(in_chs * expand_ratio)``; no expansion conv when 1.
        se_ratio: SE present iff ``0 < se_ratio <= 1``; ``max(1, int(in_chs * se_ratio))``
            squeeze channels (from the block *input* channels).
        drop_prob: Stochastic-depth probability (training only).
        norm_layer: Normalisation layer factory.

    Attributes:
        lean_recompute: Whether this block is *lean*: set by the model's lean
            recomputation policy (``RevBiFPN(lean_recompute=...)``, documented in
            :class:`~revbifpn_mm.models.RevBiFPN`), not by hand. A lean block that is being
            recomputed by a reversible backward (:func:`revbifpn_mm.core.is_recomputing`)
            checkpoints the part between the expansion and the projection conv, and each
            BN + Hardswish pair inside it; anywhere else the flag has no effect.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 expand_ratio: float = 1.0, se_ratio: float = 0.0, drop_prob: float = 0.0,
                 norm_layer: NormLayer = default_norm_layer) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        mid = int(in_chs * expand_ratio)
        self.drop_prob = float(drop_prob)
        self.exp_conv: Optional[ConvNormAct] = (
            ConvNormAct(in_chs, mid, 1, norm_layer=norm_layer) if expand_ratio != 1 else None)
        self.dw_conv = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, norm_layer=norm_layer)
        self.se: Optional[SqueezeExcite] = (
            SqueezeExcite(mid, max(1, int(in_chs * se_ratio))) if 0 < se_ratio <= 1 else None)
        self.project_conv = ConvNormAct(mid, out_chs, 1, act=False, norm_layer=norm_layer)
        self.lean_recompute = False

    def _middle(self, x: Tensor, lean: bool = False) -> Tensor:
        """Expansion BN + act (if any), depthwise conv + BN + act, SE.

        With ``lean`` each BN + act pair is checkpointed too (see :meth:`ConvNormAct.norm_act`).
        """
        if self.exp_conv is not None:
            x = self.exp_conv.norm_act(x, lean)
        x = self.dw_conv.norm_act(self.dw_conv.conv_out(x), lean)
        if self.se is not None:
            x = self.se(x, lean)
        return x

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.exp_conv is not None:
            x = self.exp_conv.conv_out(x)
        if self.lean_recompute and torch.is_grad_enabled() and is_recomputing():
            x = checkpoint(self._middle, x, True, use_reentrant=False)
        else:
            x = self._middle(x)
        x = self.project_conv(x)
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:  # noqa: D102
        return f"drop_prob={self.drop_prob}"
