"""Base class of invertible operations on lists of tensors, and how a transform is called."""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .compiled import compiled_call
from .state import CallState

__all__ = ["RevOp", "run_ops", "cast", "apply_transform", "call_transform", "trainable_params"]

Tensors = List[Tensor]


class RevOp(nn.Module):
    """An invertible map from a list of tensors (one per scale) to a list of tensors.

    Subclasses implement three methods that must agree with each other:

    * ``forward(xs, state=None) -> ys``: the map itself. Inside a reversible call it records on ``state``
      what its backward pass must replay (RNG states).
    * ``inverse(ys) -> xs``: the exact inverse (used by tests).
    * ``backward_pass(ys, dys, state) -> (xs, dxs)``: reconstruct the inputs from the outputs *and*
      back-propagate ``dys`` through the op in one pass, with one extra evaluation of each transform and no
      more. Parameter gradients go to ``state.grads``. The lists ``ys`` and ``dys`` are consumed (emptied or
      reused for the results; tensors that ``state.streams`` owns may be updated in place), so each
      activation is freed as soon as it has been replaced.
    """

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> Tensors:  # noqa: D102
        raise NotImplementedError

    def inverse(self, ys: Sequence[Tensor]) -> Tensors:  # noqa: D102
        raise NotImplementedError

    def backward_pass(self, ys: Sequence[Tensor], dys: Sequence[Tensor],
                      state: CallState) -> Tuple[Tensors, Tensors]:  # noqa: D102
        raise NotImplementedError


def run_ops(ops: Sequence[RevOp], xs: Sequence[Tensor], state: Optional[CallState]) -> Tensors:
    """Apply ``ops`` in order (recording on ``state`` when given)."""
    ys = list(xs)
    for op in ops:
        ys = op(ys, state)
    return ys


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without a dispatcher call where ``t`` already has that dtype (hundreds of calls a step)."""
    return t if t.dtype == dtype else t.to(dtype)


def _params(module: nn.Module) -> Iterator[Tensor]:
    """The parameters of ``module`` and its sub-modules: a plain walk over ``_modules`` (``Module.parameters()``
    builds a name for each, and the reversible path walks its modules on every call)."""
    stack = [module]
    while stack:
        m = stack.pop()
        if m is not None:
            yield from (p for p in m._parameters.values() if p is not None)
            stack.extend(m._modules.values())


def trainable_params(module: nn.Module) -> List[Tensor]:
    """The parameters of ``module`` that require grad."""
    return [p for p in _params(module) if p.requires_grad]


def _compute_dtype(module: nn.Module, x: Tensor) -> torch.dtype:
    """The dtype a transform computes in: that of its parameters (the stream may be wider)."""
    return next((p.dtype for p in _params(module) if p.is_floating_point()), x.dtype)


def call_transform(module: nn.Module, x: Tensor, state: Optional[CallState] = None,
                   stochastic: bool = False) -> Tensor:
    """``module(x)``, compiled where ``state`` asks for it, eager where the transform draws random numbers
    (``stochastic``: the RNG replay stays exact) or without a state (the ordinary autograd path)."""
    if state is not None and state.compiled and not stochastic:
        return compiled_call(module, x)
    return module(x)


def apply_transform(module: nn.Module, x: Tensor, state: Optional[CallState] = None) -> Tensor:
    """:func:`call_transform` with ``x`` cast from the (possibly float64) stream to the module's dtype."""
    return call_transform(module, cast(x, _compute_dtype(module, x)), state)
