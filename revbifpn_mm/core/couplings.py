"""Additive couplings: the triangular coupling, and the reversible residual block and the RevSilo, each a
composition of two triangular couplings (the second one on the streams in reversed order)."""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .backward import coupling_backward
from .op import RevOp, Tensors, _compute_dtype, apply_transform, call_transform, cast
from .state import CallState

__all__ = ["TriangularCoupling", "RevResidualBlock", "RevSilo", "RevBlockGroup"]


class TriangularCoupling(nn.Module):
    """Triangular additive coupling over the streams ``x_0 .. x_{n_in-1}``.

    Forward:  ``y_j = x_j + sum_{i<j} T_ij(x_i)``.
    Inverse:  ``x_j = y_j - sum_{i<j} T_ij(x_i)`` for ``j = 0, 1, ...`` in order.

    Every ``T_ij`` reads the coupling's *inputs*, so the inverse is exact given the ``T``'s, which need not
    be invertible. Backward (rebuilding the inputs as it goes): :func:`~revbifpn_mm.core.backward.coupling_backward`.

    Args:
        n_in: Number of input streams.
        n_out: ``n_in`` (in-place coupling) or ``n_in + 1`` (the last output is a new stream
            ``y_{n_in} = sum_i T_{i,n_in}(x_i)``, dropped by the inverse as a function of the others).
        transforms: ``{(i, j): module}`` for ``i < j``; registered as ``xform_i_j``.
    """

    def __init__(self, n_in: int, n_out: int, transforms: Dict[Tuple[int, int], nn.Module]) -> None:
        super().__init__()
        if n_out not in (n_in, n_in + 1):
            raise ValueError(f"n_out must be n_in or n_in + 1, got n_in={n_in}, n_out={n_out}")
        self.n_in, self.n_out = n_in, n_out
        self.pairs: List[Tuple[int, int]] = sorted(transforms)
        for (i, j) in self.pairs:
            if not (0 <= i < j < n_out and i < n_in):
                raise ValueError(f"invalid transform index ({i}, {j})")
            self.add_module(f"xform_{i}_{j}", transforms[(i, j)])
        if n_out > n_in and not any(j == n_in for _, j in self.pairs):
            raise ValueError("an expanding coupling needs transforms into the new stream")
        #: ``(i, [j, ...])``: each source with its targets, in the sorted order of the pairs
        self.sources = [(i, [j for _, j in pairs]) for i, pairs in itertools.groupby(self.pairs, lambda p: p[0])]

    def transform(self, i: int, j: int) -> nn.Module:
        """The transform ``T_ij``."""
        return getattr(self, f"xform_{i}_{j}")

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> Tensors:
        """Apply the coupling, source-major (``i`` then ``j``) as its backward runs, so recorded RNG replays
        exactly. Each source is cast from the stream to its transforms' dtype once."""
        stochastic = state is not None and id(self) in state.stochastic
        if state is not None:
            state.rng.push(stochastic)
        ys: List[Optional[Tensor]] = list(xs[: self.n_in]) + [None] * (self.n_out - self.n_in)
        for i, targets in self.sources:
            cast_to: Dict[torch.dtype, Tensor] = {}
            for j in targets:
                module = self.transform(i, j)
                dtype = (state is not None and state.compute_dtype) or _compute_dtype(module, xs[i])
                if dtype not in cast_to:
                    cast_to[dtype] = cast(xs[i], dtype)
                t = call_transform(module, cast_to[dtype], state, stochastic)
                ys[j] = cast(t, xs[0].dtype) if ys[j] is None else ys[j] + t
        return ys  # type: ignore[return-value]

    def inverse(self, ys: Sequence[Tensor]) -> Tensors:
        """Recover the inputs: ``x_j = y_j - sum_{i<j} T_ij(x_i)``."""
        xs = list(ys[: self.n_in])
        for (i, j) in self.pairs:
            if j < self.n_in:
                xs[j] = xs[j] - apply_transform(self.transform(i, j), xs[i])
        return xs


class RevResidualBlock(RevOp):
    """Reversible residual block on one tensor, split into channel halves ``(a, b)``.

    Forward:  ``b' = b + F(a)``,  ``a' = a + G(b')``,  ``y = cat(a', b')``.
    Inverse:  ``a = a' - G(b')``,  ``b = b' - F(a)``.

    ``F`` and ``G`` are registered as ``f.xform_0_1`` and ``g.xform_0_1`` (the
    official checkpoint layout).
    """

    def __init__(self, f: nn.Module, g: nn.Module, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"RevResidualBlock needs an even channel count, got {channels}")
        self.channels = channels
        self.f = TriangularCoupling(2, 2, {(0, 1): f})
        self.g = TriangularCoupling(2, 2, {(0, 1): g})

    def _split(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        half = x.shape[1] // 2
        return x[:, :half], x[:, half:]

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> Tensors:  # noqa: D102
        a, b = self._split(xs[0])
        a, b = self.f([a, b], state)
        b, a = self.g([b, a], state)
        return [torch.cat([a, b], dim=1)]

    def inverse(self, ys: Sequence[Tensor]) -> Tensors:  # noqa: D102
        a, b = self._split(ys[0])
        b, a = self.g.inverse([b, a])
        a, b = self.f.inverse([a, b])
        return [torch.cat([a, b], dim=1)]

    def backward_pass(self, ys: Tensors, dys: Tensors,
                      state: CallState) -> Tuple[Tensors, Tensors]:  # noqa: D102
        a, b = self._split(ys[0])
        da, db = self._split(dys[0])
        del ys[0], dys[0]
        (b, a), (db, da) = coupling_backward(self.g, [b, a], [db, da], state)
        (a, b), (da, db) = coupling_backward(self.f, [a, b], [da, db], state)
        ys.append(state.streams.join(a, b))
        del a, b
        dys.append(state.streams.join(da, db))
        return ys, dys


class RevBlockGroup(RevOp):
    """One reversible residual block per scale, applied independently.

    Forward: ``y_h = Block_h(x_h)`` for every scale; inverse: ``x_h = Block_h^{-1}(y_h)``.
    Blocks are registered as ``rev_transform_<h>``.
    """

    def __init__(self, blocks: Sequence[RevResidualBlock]) -> None:
        super().__init__()
        self.num_scales = len(blocks)
        for h, blk in enumerate(blocks):
            self.add_module(f"rev_transform_{h}", blk)

    def block(self, h: int) -> RevResidualBlock:
        """The block of scale ``h``."""
        return getattr(self, f"rev_transform_{h}")

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> Tensors:  # noqa: D102
        if len(xs) != self.num_scales:
            raise ValueError(f"RevBlockGroup expects {self.num_scales} scales, got {len(xs)}")
        return [self.block(h)([x], state)[0] for h, x in enumerate(xs)]

    def inverse(self, ys: Sequence[Tensor]) -> Tensors:  # noqa: D102
        return [self.block(h).inverse([y])[0] for h, y in enumerate(ys)]

    def backward_pass(self, ys: Tensors, dys: Tensors,
                      state: CallState) -> Tuple[Tensors, Tensors]:  # noqa: D102
        for h in reversed(range(len(ys))):  # reverse of the forward order (RNG stack)
            y, dy = [ys[h]], [dys[h]]
            ys[h] = dys[h] = None  # type: ignore[call-overload]  # let the block consume them
            (ys[h],), (dys[h],) = self.block(h).backward_pass(y, dy, state)
        return ys, dys


class RevSilo(RevOp):
    """Reversible bidirectional multi-scale fusion (the RevSilo of RevBiFPN).

    Bottom-up part ``f`` then top-down part ``g``, both triangular additive couplings:

    Forward::

        z_j = x_j + sum_{i<j} D_ij(x_i)            (z_{n-1} = sum_i D_{i,n-1}(x_i) if expanding)
        y_h = z_h + sum_{k>h} U_kh(z_k)

    Inverse::

        z_{n-1} = y_{n-1};  z_h = y_h - sum_{k>h} U_kh(z_k)      for h = n-2 .. 0
        x_0 = z_0;          x_j = z_j - sum_{i<j} D_ij(x_i)       for j = 1 .. n_in-1

    ``g`` works on the reversed stream list, so ``U_{k->h}`` is ``g.xform_a_b`` with
    ``a = n-1-k`` and ``b = n-1-h`` (the official checkpoint layout).

    Args:
        down: ``{(i, j): D_ij}`` for ``i < j``.
        up: ``{(k, h): U_kh}`` for ``k > h`` (natural scale indices).
        n_in: Number of input scales; ``n_out`` is ``n_in`` or ``n_in + 1``.
        n_out: Number of output scales.
    """

    def __init__(self, down: Dict[Tuple[int, int], nn.Module], up: Dict[Tuple[int, int], nn.Module],
                 n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.f = TriangularCoupling(n_in, n_out, down)
        self.g = TriangularCoupling(
            n_out, n_out, {(n_out - 1 - k, n_out - 1 - h): m for (k, h), m in up.items()})

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> Tensors:  # noqa: D102
        if len(xs) != self.n_in:
            raise ValueError(f"RevSilo expects {self.n_in} scales, got {len(xs)}")
        zs = self.f(xs, state)
        return self.g(zs[::-1], state)[::-1]

    def inverse(self, ys: Sequence[Tensor]) -> Tensors:  # noqa: D102
        zs = self.g.inverse(list(ys)[::-1])[::-1]
        return self.f.inverse(zs)

    def backward_pass(self, ys: Tensors, dys: Tensors,
                      state: CallState) -> Tuple[Tensors, Tensors]:  # noqa: D102
        ys.reverse()
        dys.reverse()
        zs, dzs = coupling_backward(self.g, ys, dys, state)
        zs.reverse()
        dzs.reverse()
        return coupling_backward(self.f, zs, dzs, state)
