"""Additive couplings: the reversible residual block and the RevSilo.

All couplings here are *triangular additive couplings* over a list of streams
``x_0 .. x_{n_in-1}``::

    forward:  y_j = x_j + sum_{i < j} T_ij(x_i)          (j < n_in)
              y_j =       sum_{i < n_in} T_ij(x_i)        (j = n_in, expanding only)
    inverse:  x_0 = y_0;  x_j = y_j - sum_{i < j} T_ij(x_i)   for j = 1 .. n_in-1

Every ``T_ij`` reads the coupling *inputs* (not partially updated streams), so the
inverse is exact given the ``T``'s, which need not be invertible themselves. The
reversible residual block and the RevSilo are compositions of two such couplings
(the second one acting on the streams in reversed order).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from .op import RevOp, apply_transform, submodules, vjp
from .state import CallState

__all__ = ["TriangularCoupling", "RevResidualBlock", "RevSilo", "RevBlockGroup"]

Tensors = List[Tensor]


def _is_stochastic(module: nn.Module) -> bool:
    """True when ``module`` draws random numbers in its current mode.

    Random sub-modules are those with a positive ``drop_prob`` attribute (stochastic depth) and
    dropouts (every ``nn.Dropout*`` / ``AlphaDropout``) with ``p > 0``, in training mode.
    The sub-modules are walked on every call, never cached: they may be replaced after
    the first call (SyncBN conversion, a new dropout), and a stale list would skip the
    RNG replay of a new random module, i.e. give silently wrong gradients.
    """
    if not module.training:
        return False
    # ``drop_prob`` read from the instance dict: a missing attribute through
    # Module.__getattr__ costs an exception per module, on every forward
    return any(m.training and ((m.__dict__.get("drop_prob") or 0.0) > 0.0
                               or (isinstance(m, _DropoutNd) and m.p > 0))
               for m in submodules(module))


class TriangularCoupling(nn.Module):
    """Triangular additive coupling ``y_j = x_j + sum_{i<j} T_ij(x_i)``.

    Args:
        n_in: Number of input streams.
        n_out: ``n_in`` (in-place coupling) or ``n_in + 1`` (the last output is a
            new stream ``y_{n_in} = sum_i T_{i,n_in}(x_i)``; it is dropped by the
            inverse because it is a function of the other streams).
        transforms: ``{(i, j): module}`` for ``i < j``; registered as ``xform_i_j``.

    Forward:  ``y_j = x_j + sum_{i<j} T_ij(x_i)``.
    Inverse:  ``x_j = y_j - sum_{i<j} T_ij(x_i)`` for ``j = 0, 1, ...`` in order.
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

    def transform(self, i: int, j: int) -> nn.Module:
        """The transform ``T_ij``."""
        return getattr(self, f"xform_{i}_{j}")

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> Tensors:
        """Apply the coupling. Transforms run source-major (``i`` then ``j``), the
        same order as in :meth:`backward_pass`, so recorded RNG replays exactly."""
        if state is not None:
            state.push_rng(_is_stochastic(self))
        ys: List[Optional[Tensor]] = list(xs[: self.n_in]) + [None] * (self.n_out - self.n_in)
        for (i, j) in self.pairs:
            t = apply_transform(self.transform(i, j), xs[i])
            if ys[j] is None:
                ys[j] = t.to(xs[0].dtype)
            else:
                ys[j] = ys[j] + t
        return ys  # type: ignore[return-value]

    def inverse(self, ys: Sequence[Tensor]) -> Tensors:
        """Recover the inputs: ``x_j = y_j - sum_{i<j} T_ij(x_i)``."""
        xs = list(ys[: self.n_in])
        for (i, j) in self.pairs:
            if j < self.n_in:
                xs[j] = xs[j] - apply_transform(self.transform(i, j), xs[i])
        return xs

    def backward_pass(self, ys: Tensors, dys: Tensors,
                      state: CallState) -> Tuple[Tensors, Tensors]:
        """Reconstruct the inputs and their gradients in one sweep over the sources.

        When source ``i`` is visited, every contribution of sources ``< i`` has
        already been subtracted from stream ``i``, so ``x_i`` is exact. Its gradient
        starts as ``dy_i`` (identity path) and receives ``J_ij^T dy_j`` from every
        target ``j``; the recomputed ``T_ij(x_i)`` is subtracted from stream ``j``.

        The lists ``ys`` and ``dys`` are consumed: they become the returned ``xs`` and
        ``dxs`` (updated in place, in place on the tensors too where ``state`` owns
        them). This is exact because the pairs run in sorted order: ``dy_j`` is read
        (as a target) before stream ``j``'s own gradient accumulates (as a source),
        and ``x_j`` is complete before it is read as a source.
        """
        xs, dxs = ys, dys
        with state.replay_rng():
            for (i, j) in self.pairs:
                sub = _subtract_from(xs, j, state) if j < self.n_in else None
                dxs[i] = state.add(dxs[i], vjp(self.transform(i, j), xs[i], dxs[j], state, sub))
        del xs[self.n_in:], dxs[self.n_in:]  # an expanding coupling's new stream
        return xs, dxs


def _subtract_from(xs: Tensors, j: int, state: CallState) -> Callable[[Tensor], None]:
    """``t -> xs[j] = xs[j] - t`` (in place where ``state`` owns ``xs[j]``)."""
    def sub(t: Tensor) -> None:
        xs[j] = state.sub(xs[j], t)
    return sub


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
        (b, a), (db, da) = self.g.backward_pass([b, a], [db, da], state)
        (a, b), (da, db) = self.f.backward_pass([a, b], [da, db], state)
        ys.append(_merge(a, b, state))
        del a, b
        dys.append(_merge(da, db, state))
        return ys, dys


def _merge(a: Tensor, b: Tensor, state: CallState) -> Tensor:
    """``cat([a, b], dim=1)``; no copy when ``a``, ``b`` are still the two halves of one owned tensor."""
    base = a._base
    joined = (a.shape[0], a.shape[1] + b.shape[1], *a.shape[2:])
    if (base is not None and b._base is base and state.owns(a) and base.is_contiguous()
            and base.shape == joined and a.data_ptr() == base.data_ptr()
            and b.data_ptr() == base[:, a.shape[1]:].data_ptr()):
        return base
    return state.own(torch.cat([a, b], dim=1))


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
        self._check(xs)
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

    def _check(self, xs: Sequence[Tensor]) -> None:
        if len(xs) != self.num_scales:
            raise ValueError(f"RevBlockGroup expects {self.num_scales} scales, got {len(xs)}")


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
        rys, rdys = ys[::-1], dys[::-1]
        ys.clear()
        dys.clear()
        zs, dzs = self.g.backward_pass(rys, rdys, state)
        zs.reverse()
        dzs.reverse()
        return self.f.backward_pass(zs, dzs, state)
