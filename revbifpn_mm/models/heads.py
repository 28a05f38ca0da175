"""The multi-scale heads' math, torch only: the per-level 1x1 reduction that ``RevBiFPNNeck`` and
``LeanFCNHead`` share (:func:`level_sum`), and ``LeanFCNHead``'s computation, one channel chunk at a time
(:func:`lean_fcn_forward`; why each step is exact per chunk: docs/segmentation.md, "LeanFCNHead").

The forward keeps one ``chunk``-channel block of the stride-4 tensors at a time; for backward only the
inputs ``x_i`` and per-channel vectors are saved, and each block is recomputed from them. The mm layer
(:mod:`revbifpn_mm.mm.neck`, :mod:`revbifpn_mm.mm.decode_head`) wraps both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["level_sum", "lean_fcn_forward", "is_plain_conv2d"]

_DIMS = (0, 2, 3)  # BN reduces over batch and space


def _vec(v: Tensor) -> Tensor:
    """A per-channel vector as a (1, C, 1, 1) tensor."""
    return v.view(1, -1, 1, 1)


def _chunks(channels: int, chunk: int) -> List[Tuple[int, int]]:
    return [(c, min(c + chunk, channels)) for c in range(0, channels, chunk)]


@dataclass
class _Spec:
    """The non-tensor settings of one call."""

    splits: List[int]  # input channels of each level (the column blocks of W)
    align_corners: bool
    chunk: int
    norm: Optional[_BatchNorm]
    batch_stats: bool  # BN normalises with batch statistics (and backpropagates through them)
    update_stats: bool  # ... and moves its running statistics
    group: Any  # process group of a synchronised BN, or None
    relu: bool
    conv_dtype: torch.dtype  # dtype of the level reductions and of the output (autocast's, if active)
    acc: torch.dtype  # dtype of BN, activation and classifier: the inputs', at least float32


def is_plain_conv2d(conv: nn.Module) -> bool:
    """Whether ``conv`` computes ``F.conv2d`` with its own ``weight``, as ``nn.Conv2d`` does: an
    ``nn.Conv2d`` whose forward is not overridden (``ConvWS2d`` standardises its weight in its
    forward, so the split-weight computation of :func:`level_sum` would not be its function)."""
    return isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward and \
        type(conv)._conv_forward is nn.Conv2d._conv_forward


def level_sum(feats: Sequence[Tensor], weights: Sequence[Tensor], align_corners: bool = False,
              dtype: Optional[torch.dtype] = None) -> Tensor:
    """``sum_i resize(conv1x1(x_i, W_i))`` at the first level's size, coarse levels first.

    A 1x1 convolution commutes with bilinear resizing, so this equals ``W cat_i(resize(x_i))`` (``W_i`` the
    block of ``W``'s input channels that meets level ``i``) without building the wide stride-4 concatenation.

    Args:
        feats: The levels; ``feats[0]`` sets the output size.
        weights: ``W_i`` per level, each ``(C_out, C_i, 1, 1)``.
        align_corners: Of the bilinear resize.
        dtype: Compute in this dtype (e.g. autocast's); default: the inputs'.
    """
    size = feats[0].shape[2:]
    out: Optional[Tensor] = None
    for x, w in zip(reversed(feats), reversed(weights)):
        r = F.conv2d(x, w) if dtype is None else F.conv2d(x.to(dtype), w.to(dtype))
        if r.shape[2:] != size:
            r = F.interpolate(r, size=size, mode="bilinear", align_corners=align_corners)
        out = r if out is None else out + r
    assert out is not None
    return out


def _gather_stats(mean: Tensor, var: Tensor, count: int, group: Any) -> Tuple[Tensor, Tensor, int]:
    """Combine per-rank ``(mean_i, var_i, n_i)``: ``mean = sum n_i mean_i / N``,
    ``var = sum n_i (var_i + (mean_i - mean)^2) / N`` (biased), as SyncBatchNorm does."""
    c = mean.numel()
    packed = torch.cat([mean, var, mean.new_tensor([float(count)])])
    gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, packed, group=group)
    stacked = torch.stack(gathered)
    n = stacked[:, -1:]
    total = n.sum(0)
    means, variances = stacked[:, :c], stacked[:, c:2 * c]
    mean = (n * means).sum(0) / total
    var = (n * (variances + (means - mean) ** 2)).sum(0) / total
    return mean, var, int(total.item())


@dataclass
class _Params:
    """The tensors of one ``_LeanFCN`` call besides the inputs, and the per-chunk steps both passes share."""

    spec: _Spec
    weight: Tensor
    bias: Optional[Tensor]
    gamma: Optional[Tensor]
    beta: Optional[Tensor]
    w_seg: Tensor  # converted to spec.acc
    mean: Optional[Tensor]  # None without a norm
    invstd: Optional[Tensor]
    mask: Optional[Tensor]  # converted to spec.acc

    def __post_init__(self) -> None:
        self.w_seg = self.w_seg.to(self.spec.acc)
        if self.mask is not None:
            self.mask = self.mask.to(self.spec.acc)

    def rows(self, c0: int, c1: int) -> List[Tensor]:
        """Rows ``c0:c1`` of the 1x1 conv weight, split into the levels' column blocks."""
        return list(torch.split(self.weight[c0:c1], self.spec.splits, dim=1))

    def biased(self, s: Tensor, c0: int, c1: int) -> Tensor:  # noqa: D102
        return s if self.bias is None else s + _vec(self.bias[c0:c1].to(s.dtype))

    def activate(self, s: Tensor, c0: int, c1: int) -> Tensor:
        """``mask * relu(bn(s))`` of channels ``c0:c1``, computed in ``spec.acc`` (``s`` is not modified).

        ``bn(s) = s * scale + shift`` with ``scale = gamma * invstd`` and ``shift = beta - mean * scale``.
        """
        acc, relu = self.spec.acc, self.spec.relu
        y = s.to(acc)
        if self.mean is not None and self.invstd is not None:
            invstd = self.invstd[c0:c1]
            scale = invstd if self.gamma is None else self.gamma[c0:c1].to(acc) * invstd
            shift = -self.mean[c0:c1] * scale
            if self.beta is not None:
                shift = shift + self.beta[c0:c1].to(acc)
            y = torch.addcmul(_vec(shift), y, _vec(scale))
        elif y is s and (relu or self.mask is not None):
            y = y.clone()
        if relu:
            y.clamp_(min=0)
        if self.mask is not None:
            y *= self.mask[:, c0:c1]
        return y


class _LeanFCN(torch.autograd.Function):
    """``W_seg mask relu(bn(b + sum_i resize(W_i x_i))) + b_seg`` in channel chunks (module docstring).

    In training mode BN's statistics are computed per chunk (combined over the ranks of a synchronised BN)
    and the running statistics move once, after the last chunk; the backward goes through the statistics.
    """

    @staticmethod
    def forward(ctx: Any, spec: _Spec, weight: Tensor, bias: Optional[Tensor], gamma: Optional[Tensor],
                beta: Optional[Tensor], w_seg: Tensor, b_seg: Optional[Tensor], mask: Optional[Tensor],
                *feats: Tensor) -> Tensor:
        norm, acc, x0 = spec.norm, spec.acc, feats[0]
        mean = invstd = var_all = None
        if norm is not None and spec.batch_stats:
            mean = x0.new_empty(weight.shape[0], dtype=acc)
            invstd, var_all = torch.empty_like(mean), torch.empty_like(mean)
        elif norm is not None:
            mean = norm.running_mean.to(acc, copy=True)
            invstd = torch.rsqrt(norm.running_var.to(acc) + norm.eps)
        p = _Params(spec, weight, bias, gamma, beta, w_seg, mean, invstd, mask)
        out = x0.new_zeros((x0.shape[0], w_seg.shape[0], *x0.shape[2:]), dtype=acc)
        count = local_count = x0.numel() // x0.shape[1]
        for c0, c1 in _chunks(weight.shape[0], spec.chunk):
            s = p.biased(level_sum(feats, p.rows(c0, c1), spec.align_corners, spec.conv_dtype), c0, c1)
            if var_all is not None:
                var, m = torch.var_mean(s.to(acc), dim=_DIMS, correction=0)
                if spec.group is not None:
                    m, var, count = _gather_stats(m, var, local_count, spec.group)
                mean[c0:c1], var_all[c0:c1] = m, var
                invstd[c0:c1] = torch.rsqrt(var + norm.eps)
            d = p.activate(s, c0, c1)
            del s
            out += F.conv2d(d, p.w_seg[:, c0:c1])
            del d
        if b_seg is not None:
            out += _vec(b_seg.to(acc))
        if norm is not None and spec.update_stats:
            _update_running_stats(norm, mean, var_all, count)
        ctx.spec, ctx.count, ctx.has_b_seg = spec, count, b_seg is not None
        ctx.save_for_backward(weight, bias, gamma, beta, w_seg, mean, invstd, mask, *feats)
        return out.to(spec.conv_dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        weight, bias, gamma, beta, w_seg, mean, invstd, mask, *feats = ctx.saved_tensors
        p = _Params(ctx.spec, weight, bias, gamma, beta, w_seg, mean, invstd, mask)
        g = grad_out.to(p.spec.acc)
        need_x = ctx.needs_input_grad[8:]
        # each gradient in its input's dtype: the chunks' results are cast as they are written
        grads = _Grads(w_seg=torch.empty_like(w_seg), weight=torch.empty_like(weight),
                       bias=None if bias is None else torch.empty_like(bias),
                       gamma=None if mean is None or gamma is None else torch.empty_like(gamma),
                       beta=None if mean is None or beta is None else torch.empty_like(beta),
                       feats=[torch.zeros_like(x) if need else None for x, need in zip(feats, need_x)])
        xs = [x.detach().requires_grad_(need) for x, need in zip(feats, need_x)]
        for c0, c1 in _chunks(weight.shape[0], p.spec.chunk):
            _chunk_backward(p, ctx.count, g, xs, grads, c0, c1)
        grad_b_seg = g.sum(_DIMS).to(w_seg.dtype) if ctx.has_b_seg else None
        return (None, grads.weight, grads.bias, grads.gamma, grads.beta, grads.w_seg, grad_b_seg, None, *grads.feats)


@dataclass
class _Grads:
    """The gradients ``_LeanFCN``'s backward fills, one chunk of channels at a time."""

    w_seg: Tensor
    weight: Tensor
    bias: Optional[Tensor]
    gamma: Optional[Tensor]
    beta: Optional[Tensor]
    feats: List[Optional[Tensor]]  # accumulated over the chunks; None where no gradient is needed


def _chunk_backward(p: _Params, count: int, g: Tensor, xs: List[Tensor], grads: _Grads, c0: int, c1: int) -> None:
    """The backward of output channels ``c0:c1``: recompute ``s_c`` and ``d_c`` from the inputs, fill the
    chunk's gradients of ``W_seg``, ``W``, ``b``, gamma and beta, add its share to the inputs' gradients."""
    spec = p.spec
    rows = [w.detach().requires_grad_() for w in p.rows(c0, c1)]
    with torch.enable_grad():
        s = level_sum(xs, rows, spec.align_corners, spec.conv_dtype)
    s_val = p.biased(s.detach(), c0, c1)
    d = p.activate(s_val, c0, c1)
    grads.w_seg[:, c0:c1] = torch.matmul(g.flatten(2), d.flatten(2).transpose(1, 2)).sum(0)[..., None, None]
    gy = F.conv2d(g, p.w_seg[:, c0:c1].transpose(0, 1))  # W_seg[:, c]^T g
    if p.mask is not None:
        gy *= p.mask[:, c0:c1]
    if spec.relu:  # mask entries are 0 or 1/(1-p) > 0, so d != 0 exactly where the ReLU passed
        gy *= d != 0
    del d
    if p.mean is not None:
        gy = _bn_backward(gy, s_val, p, count, grads, c0, c1)
    del s_val
    if grads.bias is not None:
        grads.bias[c0:c1] = gy.sum(_DIMS)
    found = torch.autograd.grad(s, [x for x in xs if x.requires_grad] + rows, gy.to(s.dtype))
    del s, gy
    it = iter(found)
    for i, x in enumerate(xs):
        if x.requires_grad:
            grads.feats[i] += next(it)
    grads.weight[c0:c1] = torch.cat(list(it), dim=1)


def _bn_backward(gy: Tensor, s_val: Tensor, p: _Params, count: int, grads: _Grads, c0: int, c1: int) -> Tensor:
    """``dL/ds`` from ``gy = dL/dbn(s)`` for channels ``c0:c1`` (in place on ``gy``), filling the chunk's
    gamma and beta gradients. Train mode backpropagates through the batch statistics, with the two
    per-channel sums all-reduced over the ranks of a synchronised BN, as ``torch.nn.SyncBatchNorm``."""
    assert p.mean is not None and p.invstd is not None
    spec = p.spec
    inv = _vec(p.invstd[c0:c1])
    xhat = (s_val.to(spec.acc) - _vec(p.mean[c0:c1])) * inv
    sums = torch.cat([gy.sum(_DIMS), (gy * xhat).sum(_DIMS)])
    k = c1 - c0
    if grads.beta is not None:
        grads.beta[c0:c1] = sums[:k]
    if grads.gamma is not None:
        grads.gamma[c0:c1] = sums[k:]
    if spec.batch_stats:
        if spec.group is not None:
            dist.all_reduce(sums, group=spec.group)
        sums /= count
        gy -= _vec(sums[:k])
        gy -= xhat * _vec(sums[k:])
    del xhat
    gy *= inv if p.gamma is None else inv * _vec(p.gamma[c0:c1].to(spec.acc))
    return gy


def _update_running_stats(norm: _BatchNorm, mean: Tensor, var: Tensor, count: int) -> None:
    """Move the running statistics as ``_BatchNorm.forward`` does (unbiased variance)."""
    with torch.no_grad():
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
        # momentum None: the cumulative moving average
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        unbiased = var * (count / max(count - 1, 1))
        norm.running_mean.mul_(1 - factor).add_(mean.to(norm.running_mean.dtype), alpha=factor)
        norm.running_var.mul_(1 - factor).add_(unbiased.to(norm.running_var.dtype), alpha=factor)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast gives convolutions on ``device_type`` now, or None if it is off."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _sync_group(norm: _BatchNorm) -> Any:
    """The process group whose batch statistics ``norm`` combines, or None: as ``torch.nn.SyncBatchNorm``, a
    SyncBatchNorm in training mode with ``torch.distributed`` initialised and more than one rank in its group."""
    if not isinstance(norm, nn.SyncBatchNorm) or not norm.training:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = norm.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def lean_fcn_forward(feats: Sequence[Tensor], conv: nn.Conv2d, norm: Optional[_BatchNorm], relu: bool,
                     dropout: Optional[nn.Module], conv_seg: nn.Conv2d, chunk_channels: int,
                     align_corners: bool) -> Tensor:
    """``conv_seg(dropout(relu(norm(conv(cat_i resize(feats_i))))))`` without full-width tensors.

    Equal to running mmseg's ``FCNHead`` in the HRNet setting on ``feats`` (train or eval
    mode; ``norm`` a BatchNorm, a ``SyncBatchNorm`` or None), including the running
    statistics, which move exactly once per call, and the Dropout2d mask, drawn as
    ``nn.Dropout2d`` draws it.

    Args:
        feats: The levels, the first one at the output resolution; the others are resized to it.
        conv: The 1x1 conv over the concatenation (``in_channels = sum`` of the levels').
        norm: The BatchNorm after it, or None.
        relu: Whether a ReLU follows.
        dropout: ``nn.Dropout2d`` before the classifier, or None.
        conv_seg: The 1x1 classifier.
        chunk_channels: Channels of ``conv``'s output computed at once.
        align_corners: ``align_corners`` of the bilinear resize.

    Returns:
        The logits, N x K x H x W at ``feats[0]``'s resolution.
    """
    batch_stats = update_stats = False
    group = gamma = beta = None
    if norm is not None:
        batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
        update_stats = norm.training and norm.track_running_stats
        group = _sync_group(norm) if batch_stats else None
        gamma, beta = norm.weight, norm.bias
    spec = _Spec(splits=[int(x.shape[1]) for x in feats], align_corners=align_corners, chunk=chunk_channels,
                 norm=norm, batch_stats=batch_stats, update_stats=update_stats, group=group, relu=relu,
                 conv_dtype=_autocast_dtype(feats[0].device.type) or feats[0].dtype,
                 acc=torch.promote_types(feats[0].dtype, torch.float32))
    mask = None
    if dropout is not None and dropout.training:
        # the Bernoulli draws nn.Dropout2d makes on an N x C x H x W input: one per (sample, channel)
        mask = dropout(feats[0].new_ones((feats[0].shape[0], conv.out_channels, 1, 1)))
    # The Function picks its dtypes: autocast's for the level reductions (spec.conv_dtype),
    # at least float32 for BN, activation and classifier.
    with torch.autocast(device_type=feats[0].device.type, enabled=False):
        return _LeanFCN.apply(spec, conv.weight, conv.bias, gamma, beta, conv_seg.weight, conv_seg.bias, mask,
                              *feats)
