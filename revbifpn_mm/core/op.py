"""Base class of invertible operations on lists of tensors, and the recompute-and-backprop step."""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from .compiled import compiled_call
from .state import CallState

__all__ = ["RevOp", "vjp", "apply_transform", "call_transform", "submodules", "trainable_params"]

Tensors = List[Tensor]


class RevOp(nn.Module):
    """An invertible map from a list of tensors (one per scale) to a list of tensors.

    Subclasses implement three methods that must agree with each other:

    * ``forward(xs, state=None) -> ys``: the map itself. ``state`` is given only when
      the op runs inside a reversible call; the op then records on it what its
      backward pass must replay (RNG states).
    * ``inverse(ys) -> xs``: the exact inverse (used by tests).
    * ``backward_pass(ys, dys, state) -> (xs, dxs)``: reconstruct the inputs from
      the outputs *and* back-propagate ``dys`` through the op in one pass, with one
      extra evaluation of each transform and no more. Parameter gradients go to
      ``state.grads``. The lists ``ys`` and ``dys`` are consumed (they may be emptied or
      reused for the results, and tensors that ``state.streams`` owns may be updated in
      place), so each activation is freed as soon as it has been replaced.
    """

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> Tensors:  # noqa: D102
        raise NotImplementedError

    def inverse(self, ys: Sequence[Tensor]) -> Tensors:  # noqa: D102
        raise NotImplementedError

    def backward_pass(self, ys: Sequence[Tensor], dys: Sequence[Tensor],
                      state: CallState) -> Tuple[Tensors, Tensors]:  # noqa: D102
        raise NotImplementedError


def submodules(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and all its sub-modules, skipping ``None`` children.

    A plain walk over ``_modules``: ``Module.modules()`` builds a name for every sub-module,
    and the reversible path walks its modules on every call.
    """
    stack = [module]
    while stack:
        m = stack.pop()
        if m is not None:
            yield m
            stack.extend(m._modules.values())


def trainable_params(module: nn.Module) -> List[Tensor]:
    """The parameters of ``module`` that require grad (a plain walk, as :func:`submodules`)."""
    return [p for m in submodules(module) for p in m._parameters.values() if p is not None and p.requires_grad]


def _compute_dtype(module: nn.Module, x: Tensor) -> torch.dtype:
    """The dtype a transform computes in: that of its parameters (the stream may be wider)."""
    for m in submodules(module):
        for p in m._parameters.values():
            if p is not None and p.is_floating_point():
                return p.dtype
    return x.dtype


def call_transform(module: nn.Module, x: Tensor, state: Optional[CallState] = None,
                   stochastic: bool = False) -> Tensor:
    """``module(x)``: compiled when ``state`` asks for it (:attr:`CallState.compiled`), eager where the
    transform draws random numbers (``stochastic``: eager keeps the recorded RNG replay exact) or
    without a state (the ordinary autograd path)."""
    if state is not None and state.compiled and not stochastic:
        return compiled_call(module, x)
    return module(x)


def apply_transform(module: nn.Module, x: Tensor, state: Optional[CallState] = None) -> Tensor:
    """``module(x)`` with ``x`` cast from the (possibly float64) stream to the module's dtype
    (compiled where ``state`` asks for it, see :func:`call_transform`)."""
    return call_transform(module, x.to(_compute_dtype(module, x)), state)


def vjp(module: nn.Module, x: Tensor, grad_out: Tensor, state: CallState,
        on_output: Optional[Callable[[Tensor], None]] = None, lean: bool = False,
        stochastic: bool = False) -> Tensor:
    """Recompute ``module(x)`` with autograd and back-propagate ``grad_out`` through it.

    The recomputed output is handed (detached) to ``on_output`` and then released *before*
    the backward runs: back-propagation starts from the output's gradient edge
    (``torch.autograd.graph.get_gradient_edge``), so the output's storage is not part of the
    op's working set unless the module's own graph saved it.

    Args:
        module: The transform to recompute (parameters may be frozen).
        x: Its (reconstructed) input, possibly in a wider stream dtype; not modified.
        grad_out: Gradient of the loss with respect to the transform's output.
        state: Receives the gradients of the trainable parameters; gives the autocast state.
        on_output: Called with the recomputed output (detached), e.g. to subtract it from a
            stream; it must not keep a reference to it.
        lean: Run the transform's ``lean_forward`` where it has one (a smaller working set for
            a second evaluation of its cheap layers; see :class:`~revbifpn_mm.core.RunPolicy`).
            A compiled recomputation (``state.compiled``) runs ``forward`` instead: the compiler's
            partitioner already recomputes the cheap elementwise layers rather than saving them.
        stochastic: The transform draws random numbers (it then runs eager, see :func:`call_transform`).

    Returns:
        The gradient of the loss with respect to ``x`` (in the transform's dtype).
    """
    compiled = state.compiled and not stochastic
    fn = getattr(module, "lean_forward", module) if lean and not compiled else module
    with torch.enable_grad():
        x_ = x.detach().to(state.compute_dtype or _compute_dtype(module, x)).requires_grad_(True)
        with state.autocast():  # only the recomputed forward, as in the original
            y = compiled_call(module, x_) if compiled else fn(x_)  # the backward runs outside autocast
        if on_output is not None:
            on_output(y.detach())
        if not y.requires_grad:  # nothing in the transform depends on x or a trainable parameter
            return torch.zeros_like(x_)
        params = trainable_params(module)
        grad_out = grad_out.to(y.dtype)
        edge = get_gradient_edge(y)
        del y
        grads = torch.autograd.grad(edge, [x_] + params, grad_out, allow_unused=True)
    state.grads.add(params, grads[1:])
    return torch.zeros_like(x_) if grads[0] is None else grads[0]
