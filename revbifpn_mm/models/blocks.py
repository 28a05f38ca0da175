"""Building blocks of RevBiFPN: Conv-Norm-Act, squeeze-excite, MBConv, drop path."""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

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
    """``conv(k, stride, groups, no bias) -> norm -> optional Hardswish``; children ``conv`` and ``norm``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act: bool = True, norm_layer: NormLayer = default_norm_layer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.norm = norm_layer(out_chs)
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.norm_act(self.conv(x))

    def norm_act(self, x: Tensor, lean: bool = False) -> Tensor:
        """``act(norm(x))``, the layers after the convolution. With ``lean`` the pair is
        checkpointed: only ``x`` is kept for backward, the norm output is recomputed."""
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
        return _ChannelScale.apply(x, gate) if lean else x * gate


class _ChannelScale(torch.autograd.Function):
    """``y = x * s`` for ``x`` of shape (N, C, H, W) and a per-channel ``s`` (N, C, 1, 1).

    Backward: ``dx = dy * s`` and ``ds[n, c] = sum_hw dy[n, c] * x[n, c]``, the product ``dy * x`` formed and
    reduced in 8 channel chunks (autograd's ``mul`` forms it full-size). Each ``(n, c)`` sum runs over the same
    elements in the same order, so the result is bitwise autograd's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, s = ctx.saved_tensors
        ds = None
        if ctx.needs_input_grad[1]:
            ds = torch.cat([(d * xc).sum((2, 3), keepdim=True)
                            for d, xc in zip(dy.tensor_split(8, dim=1), x.tensor_split(8, dim=1))], dim=1).to(s.dtype)
        dx = (dy * s).to(x.dtype) if ctx.needs_input_grad[0] else None
        return dx, ds


class MBConv(nn.Module):
    """Inverted-residual block without identity skip (residuals live in the couplings).

    ``exp_conv [1x1 expand + BN + hswish] -> dw_conv [kxk depthwise (stride) + BN + hswish] -> se
    -> project_conv [1x1 + BN] -> drop path``; an absent expansion (``expand_ratio == 1``) or SE is an
    ``nn.Identity`` (no parameters: the official key layout is unchanged).

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
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 expand_ratio: float = 1.0, se_ratio: float = 0.0, drop_prob: float = 0.0,
                 norm_layer: NormLayer = default_norm_layer) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        mid = int(in_chs * expand_ratio)
        self.drop_prob = float(drop_prob)
        self.exp_conv = ConvNormAct(in_chs, mid, 1, norm_layer=norm_layer) if expand_ratio != 1 else nn.Identity()
        self.dw_conv = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, norm_layer=norm_layer)
        self.se = SqueezeExcite(mid, max(1, int(in_chs * se_ratio))) if 0 < se_ratio <= 1 else nn.Identity()
        self.project_conv = ConvNormAct(mid, out_chs, 1, act=False, norm_layer=norm_layer)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.project_conv(self.se(self.dw_conv(self.exp_conv(x))))
        return drop_path(x, self.drop_prob, self.training)

    def lean_forward(self, x: Tensor) -> Tensor:
        """:meth:`forward` with the middle (expansion BN + Hardswish, depthwise conv + BN + Hardswish, SE)
        checkpointed, each BN + Hardswish pair keeping only its input: 3-5 expanded-width maps fewer for backward,
        outputs and gradients bitwise :meth:`forward`'s. A training-mode BN would update its running statistics
        twice: call it where they are frozen (the reversible backward does).
        """
        if not torch.is_grad_enabled():
            return self.forward(x)
        if isinstance(self.exp_conv, ConvNormAct):
            x = self.exp_conv.conv(x)
        x = checkpoint(self._lean_middle, x, use_reentrant=False)
        x = self.project_conv(x)
        return drop_path(x, self.drop_prob, self.training)

    def _lean_middle(self, x: Tensor) -> Tensor:
        """The layers between the expansion conv and the projection, each BN + act pair checkpointed."""
        if isinstance(self.exp_conv, ConvNormAct):
            x = self.exp_conv.norm_act(x, lean=True)
        x = self.dw_conv.norm_act(self.dw_conv.conv(x), lean=True)
        return self.se(x, lean=True) if isinstance(self.se, SqueezeExcite) else x

    def extra_repr(self) -> str:  # noqa: D102
        return f"drop_prob={self.drop_prob}"
