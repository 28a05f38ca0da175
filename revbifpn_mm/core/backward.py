"""The reversible backward, top to bottom: how a segment's inputs are rebuilt and its gradients formed.

A training call of :class:`~revbifpn_mm.core.RevSequential` runs its trunk as a chain of :class:`Segment` s,
each one :class:`RevSegment` autograd Function. ``RevSegment.backward`` recomputes the tail
(:func:`tail_backward`), then runs each op's ``backward_pass`` in reverse, whose couplings rebuild their inputs
and back-propagate in one sweep (:func:`coupling_backward`, :func:`recompute`). Everything per call lives on the
:class:`~revbifpn_mm.core.state.CallState` its segments share. The path is drawn in docs/design.md.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.nn.modules.batchnorm import _BatchNorm

from .op import RevOp, Tensors, _compute_dtype, call_transform, cast, run_ops, trainable_params
from .state import CallState

__all__ = ["Segment", "RevSegment", "tail_backward", "coupling_backward", "recompute"]

_DOUBLE_BACKWARD = (
    "double backward (create_graph=True, e.g. a gradient penalty) is not supported through the reversible "
    "path of RevSequential: its backward reconstructs activations without building a graph, so the "
    "second-order term would silently be dropped. Train this model with memory_mode='plain' (or call "
    "set_memory_mode('plain') on it) for such losses")


@dataclass(eq=False)
class Segment:
    """One reversible segment of one call, as the container scheduled it.

    Attributes:
        ops: The invertible ops, in forward order.
        state: The call's state, shared by its segments.
        params: The trainable parameters of ``ops`` (and of ``tail``): inputs of the Function.
        bns: Training-mode BatchNorms whose statistics are frozen while the segment is recomputed.
        stores: The last segment of a reversible run: it saves its outputs for the backward.
        below: The previous segment of the same run, which receives the inputs this backward rebuilds.
        tail: The recomputed tail, when it follows this (storing) segment in the same Function.
        out_dtype: The dtype of the container's outputs, when this segment ends the container.
        begins_backward: The call's last reversible segment: its backward runs first.
        rebuilt_outputs: This segment's outputs, rebuilt by the backward of the segment above.
    """

    ops: List[RevOp]
    state: CallState
    params: List[Tensor]
    bns: List[_BatchNorm]
    stores: bool
    below: Optional["Segment"] = None
    tail: Optional[nn.Module] = None
    out_dtype: Optional[torch.dtype] = None
    begins_backward: bool = False
    rebuilt_outputs: Optional[Tensors] = None


class RevSegment(torch.autograd.Function):
    """Runs one :class:`Segment` without storing its activations: ``apply(segment, n_in, *xs, *params)``.

    The parameters are inputs of the Function, so they get gradients without a grad-requiring image,
    ``torch.autograd.grad`` sees them, and each segment hands them to autograd (and DDP) as its backward ends.
    """

    @staticmethod
    def forward(ctx: Any, seg: Segment, n_in: int, *args: Tensor) -> Tuple[Tensor, ...]:  # type: ignore[override]
        xs = list(args[:n_in])
        with torch.no_grad():
            ys = outs = run_ops(seg.ops, xs, seg.state)
            if seg.stores:
                if seg.tail is not None:
                    outs = seg.tail(ys, seg.state)
                elif seg.out_dtype is not None:
                    outs = [y.to(seg.out_dtype) for y in ys]
                ctx.save_for_backward(*ys)
                ctx.private = not _share_storage(ys, list(outs) + xs)
        ctx.seg, ctx.n_in = seg, n_in
        ctx.in_dtypes = [x.dtype for x in xs]
        ctx.param_ids = [id(p) for p in args[n_in:]]
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *douts: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # the engine enables grad mode in backward only for create_graph=True
            raise RuntimeError(_DOUBLE_BACKWARD)
        seg: Segment = ctx.seg
        state = seg.state
        if seg.begins_backward:
            state.begin_backward()
        ys = _outputs(ctx, seg)
        need = ctx.needs_input_grad[2:2 + ctx.n_in]
        # without an input gradient, ops below the first trainable one (frozen stages, the stem) need no backward
        first = 0 if any(need) else next((i for i, op in enumerate(seg.ops) if trainable_params(op)), len(seg.ops))
        with torch.no_grad(), _frozen_statistics(seg.bns):
            dys = tail_backward(seg.tail, ys, douts, state) if seg.tail is not None else list(douts)
            dys = _in_compute_dtype(dys, state)
            del douts  # the lists below are consumed, so each replaced tensor is freed at once
            for op in reversed(seg.ops[first:]):
                ys, dys = op.backward_pass(ys, dys, state)
        if any(need) and seg.below is not None:
            seg.below.rebuilt_outputs = ys
        dxs = [cast(dx, dt) if n else None for dx, dt, n in zip(dys, ctx.in_dtypes, need)]
        return (None, None, *dxs, *state.grads.pop(ctx.param_ids))


def _outputs(ctx: Any, seg: Segment) -> Tensors:
    """The segment's outputs: rebuilt by the segment above, or saved (and then, when private and the
    graph is not kept, owned by this backward so that the streams update them in place)."""
    if not seg.stores:
        ys, seg.rebuilt_outputs = seg.rebuilt_outputs, None
        return ys  # type: ignore[return-value]
    ys = list(ctx.saved_tensors)
    # the engine's own query: whether this backward keeps the graph (``retain_graph`` / ``create_graph``)
    if ctx.private and seg.state.reuse_buffers and not torch._C._autograd._get_current_graph_task_keep_graph():
        ys = [seg.state.streams.own(y) for y in ys]  # freed after this backward anyway
    return ys


def _in_compute_dtype(dys: Tensors, state: CallState) -> Tensors:
    """Gradients need no float64 streams: in the transforms' dtype (a private copy) where they all share one."""
    cd = state.compute_dtype
    if cd is None:
        return dys
    return [state.streams.own(d.to(cd)) if d.is_floating_point() and d.dtype != cd else d for d in dys]


def tail_backward(tail: nn.Module, ys: Sequence[Tensor], douts: Sequence[Tensor], state: CallState) -> Tensors:
    """Gradients of the tail's inputs: ``dy_h = J_h^T dout_h`` for ``O_h = M_h(y_h)``, each ``M_h`` recomputed
    from the stored ``y_h`` (its ``lean_forward`` with ``state.lean``). The trunk's backward accumulates into
    them in place, unless one aliases its incoming gradient."""
    dys = []
    for h, (y, d) in enumerate(zip(ys, douts)):
        dy = recompute(tail.transform(h), y, state, lean=state.lean)[1](d)  # t and backprop are dropped at once
        dys.append(dy if _share_storage([dy], [d]) else state.streams.own(dy))
    return dys


def coupling_backward(coupling: nn.Module, ys: Tensors, dys: Tensors, state: CallState) -> Tuple[Tensors, Tensors]:
    """Rebuild the inputs of a triangular coupling and their gradients in one sweep over its sources.

    For ``y_j = x_j + sum_{i<j} T_ij(x_i)``: when source ``i`` is visited, every contribution of
    sources ``< i`` has been subtracted from stream ``i``, so ``x_i`` is exact. Its gradient starts as
    ``dy_i`` (identity path) and receives ``J_ij^T dy_j`` from every target ``j``; the recomputed
    ``T_ij(x_i)`` is subtracted from stream ``j``. One transform at a time: the smallest working set.

    The lists ``ys`` and ``dys`` are consumed: they become the returned ``xs`` and ``dxs`` (in place
    on the tensors too where ``state.streams`` owns them). This is exact because the sources run in
    increasing order: ``dy_j`` is read (as a target) before stream ``j``'s own gradient accumulates
    (as a source), and ``x_j`` is complete before it is read as a source. An expanding coupling's new
    stream is dropped.
    """
    xs, dxs = ys, dys
    stochastic = id(coupling) in state.stochastic
    with state.rng.replay():
        for i, targets in coupling.sources:
            xi = cast(xs[i], state.compute_dtype) if state.compute_dtype is not None else xs[i]  # cast once
            for j in targets:
                t, backprop = recompute(coupling.transform(i, j), xi, state, stochastic=stochastic)
                if j < coupling.n_in:
                    xs[j] = state.streams.sub(xs[j], t)  # x_j = y_j - T_ij(x_i)
                del t
                dxs[i] = state.streams.add(dxs[i], backprop(dxs[j]))  # dx_i += J_ij^T dy_j
                del backprop  # its input copy, before the next transform runs
            del xi
    del xs[coupling.n_in:], dxs[coupling.n_in:]
    return xs, dxs


def recompute(module: nn.Module, x: Tensor, state: CallState, *, lean: bool = False,
              stochastic: bool = False) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Evaluate a transform again, with autograd.

    Back-propagation starts from the output's gradient edge (``get_gradient_edge``), so once the caller drops
    ``t`` its storage is not part of the working set of ``backprop`` unless the transform's own graph saved it.

    Args:
        module: The transform (parameters may be frozen).
        x: Its (rebuilt) input, possibly in a wider stream dtype; not modified.
        state: The call's state: autocast, compute dtype, gradients, compilation.
        lean: Run the transform's ``lean_forward`` where it has one (a smaller working set; see
            :class:`~revbifpn_mm.core.RunPolicy`), eager also under ``compile_transforms``: the
            compiled ``forward`` in its place raised the step's peak as much as ``lean=False`` does.
        stochastic: The transform draws random numbers: it runs eager, so the RNG replay stays exact.

    Returns:
        ``(t, backprop)``: ``t = module(x)`` under the forward's autocast, detached; ``backprop(dy)`` returns
        ``J^T dy`` (the gradient for ``x``) and adds the trainable parameters' gradients to ``state.grads``.
    """
    lean_fn = getattr(module, "lean_forward", None) if lean else None
    with torch.enable_grad():
        x_ = cast(x.detach(), state.compute_dtype or _compute_dtype(module, x)).requires_grad_(True)
        with state.autocast():  # only the recomputed forward, as in the original; the backward runs outside
            y = lean_fn(x_) if lean_fn is not None else call_transform(module, x_, state, stochastic)
    t = y.detach()
    if not y.requires_grad:  # nothing in the transform depends on x or a trainable parameter
        return t, lambda dy: torch.zeros_like(x_)
    edge, out_dtype, params = get_gradient_edge(y), y.dtype, trainable_params(module)
    del y

    def backprop(dy: Tensor) -> Tensor:
        with torch.enable_grad():
            grads = torch.autograd.grad(edge, [x_] + params, cast(dy, out_dtype), allow_unused=True)
        state.grads.add(params, grads[1:])
        return torch.zeros_like(x_) if grads[0] is None else grads[0]

    return t, backprop


@contextlib.contextmanager
def _frozen_statistics(bns: Sequence[_BatchNorm]) -> Iterator[None]:
    """Training BatchNorms that do not update their running statistics: the recomputation runs in here, so
    each step updates them once (the official implementation updates them twice)."""
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def _share_storage(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Whether any tensor of ``a`` shares its storage with a tensor of ``b``."""
    ptrs = {t.untyped_storage().data_ptr() for t in b}
    return any(t.untyped_storage().data_ptr() in ptrs for t in a)
