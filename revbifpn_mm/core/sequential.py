"""The reversible sequential container and its single autograd Function."""
from __future__ import annotations

from enum import Enum
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .op import RevOp, apply_transform, vjp
from .state import CallState, frozen_bn_statistics

__all__ = ["MemoryMode", "RevSequential", "RecomputedPerScale"]


class MemoryMode(str, Enum):
    """How a :class:`RevSequential` trains.

    ``REVERSIBLE``: store only the outputs; reconstruct every intermediate activation
    in the backward pass (activation memory constant in depth). ``PLAIN``: ordinary
    autograd (stores every activation; for debugging and as a reference).
    """

    REVERSIBLE = "reversible"
    PLAIN = "plain"


class RecomputedPerScale(nn.Module):
    """A non-invertible per-scale tail (``O_h = M_h(y_h)``), recomputed in backward.

    Registered children are ``recomp_transform_<h>`` (the official neck layout).
    In a reversible call only its inputs (the trunk outputs, stored anyway) are kept;
    its activations are recomputed from them (checkpointing).
    """

    def __init__(self, transforms: Sequence[nn.Module]) -> None:
        super().__init__()
        self.num_scales = len(transforms)
        for h, m in enumerate(transforms):
            self.add_module(f"recomp_transform_{h}", m)

    def transform(self, h: int) -> nn.Module:
        """The transform of scale ``h``."""
        return getattr(self, f"recomp_transform_{h}")

    def forward(self, ys: Sequence[Tensor]) -> List[Tensor]:  # noqa: D102
        return [apply_transform(self.transform(h), y) for h, y in enumerate(ys)]

    def backward_pass(self, ys: Sequence[Tensor], douts: Sequence[Tensor],
                      state: CallState) -> List[Tensor]:
        """Gradients with respect to the tail inputs ``ys`` (parameters go to ``state``)."""
        return [vjp(self.transform(h), y, d, state)[1] for h, (y, d) in enumerate(zip(ys, douts))]


class _RevFunction(torch.autograd.Function):
    """Runs a :class:`RevSequential` without storing intermediate activations.

    Inputs are ``(container, n_in, *xs, *params)``. The parameters are inputs of the
    Function so that autograd sees them: they receive gradients even when ``xs`` do
    not require grad, ``torch.autograd.grad`` works on them, and DDP's gradient hooks
    fire as usual. Only the trunk outputs are saved (``save_for_backward``); RNG and
    autocast state live on the per-call :class:`CallState` in ``ctx``.
    """

    @staticmethod
    def forward(ctx, container: "RevSequential", n_in: int, *args: Tensor):  # type: ignore[override]
        xs, params = list(args[:n_in]), args[n_in:]
        state = CallState(xs, params)
        with torch.no_grad():
            ys = container._run_trunk(container._to_stream(xs), state)
            outs = container.tail(ys) if container.tail is not None else [y.to(xs[0].dtype) for y in ys]
        ctx.container = container
        ctx.state = state
        ctx.n_in = n_in
        ctx.in_dtypes = [x.dtype for x in xs]
        ctx.param_ids = [id(p) for p in params]
        ctx.save_for_backward(*ys)
        ctx.set_materialize_grads(True)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *douts: Tensor):  # type: ignore[override]
        container: RevSequential = ctx.container
        state: CallState = ctx.state
        ys = list(ctx.saved_tensors)
        douts = list(douts)
        state.begin_backward()
        with torch.no_grad(), frozen_bn_statistics(container):
            if container.tail is not None:
                dys = container.tail.backward_pass(ys, douts, state)
            else:
                dys = douts
            del douts
            ops = container.ops()
            need_inputs = any(ctx.needs_input_grad[2:2 + ctx.n_in])
            # Without an input gradient, ops below the first trainable one (frozen
            # stages, the parameter-free stem) need neither reconstruction nor backward.
            stop = 0 if need_inputs else next(
                (i for i, op in enumerate(ops) if any(p.requires_grad for p in op.parameters())), len(ops))
            for op in reversed(ops[stop:]):
                ys, dys = op.backward_pass(ys, dys, state)
        if not need_inputs:
            dys = [None] * ctx.n_in
        dxs = [dx.to(dt) if need else None
               for dx, dt, need in zip(dys, ctx.in_dtypes, ctx.needs_input_grad[2:2 + ctx.n_in])]
        pgrads = [state.grads.pop(pid, None) for pid in ctx.param_ids]
        state.grads = {}
        return (None, None, *dxs, *pgrads)


class RevSequential(nn.Module):
    """A sequence of :class:`RevOp` s, optionally followed by a recomputed tail.

    Children are registered as ``"0"``, ``"1"``, ... and the tail as ``recomp_op``
    (the official checkpoint layout of ``rev_stack``).

    In training with autograd enabled and :attr:`memory_mode` ``'reversible'``, one
    autograd Function runs everything and stores only the trunk outputs; the backward
    pass reconstructs each op's inputs from its outputs. Otherwise (``'plain'`` mode,
    ``eval()``, or ``torch.no_grad()``) the ops run with ordinary autograd.

    The residual streams between ops are carried in ``stream_dtype`` (float64 by
    default) while every transform computes in its parameters' dtype. Additive
    couplings are then inverted to float64 round-off, so the inputs recomputed in the
    backward pass are bitwise those of the forward (fp32 or autocast) and the
    reversible gradients match plain autograd to the transforms' own precision.
    Float32 streams halve the stored bytes but let the reconstruction error grow
    towards the stem (about 5e-5 relative for RevBiFPN-S3), which training-mode
    BatchNorm amplifies in the gradients of the first layers.

    Args:
        ops: The invertible operations, applied in order.
        tail: Optional non-invertible per-scale module applied to the trunk outputs.
        memory_mode: ``'reversible'`` (default) or ``'plain'``.
        stream_dtype: dtype of the residual streams (``None``: the input's dtype).
            Defaults to ``torch.float64``.
    """

    def __init__(self, ops: Sequence[RevOp], tail: Optional[RecomputedPerScale] = None,
                 memory_mode: Union[str, MemoryMode] = MemoryMode.REVERSIBLE,
                 stream_dtype: Optional[torch.dtype] = torch.float64) -> None:
        super().__init__()
        self.num_ops = len(ops)
        for i, op in enumerate(ops):
            self.add_module(str(i), op)
        self.recomp_op = tail
        self.memory_mode = MemoryMode(memory_mode)
        self.stream_dtype = stream_dtype

    def _to_stream(self, xs: Sequence[Tensor]) -> List[Tensor]:
        if self.stream_dtype is None:
            return list(xs)
        return [x.to(torch.promote_types(x.dtype, self.stream_dtype)) for x in xs]

    @property
    def tail(self) -> Optional[RecomputedPerScale]:
        """The recomputed non-invertible tail, or ``None``."""
        return self.recomp_op

    def ops(self) -> List[RevOp]:
        """The invertible ops in forward order."""
        return [getattr(self, str(i)) for i in range(self.num_ops)]

    def set_memory_mode(self, mode: Union[str, MemoryMode]) -> None:
        """Switch between ``'reversible'`` and ``'plain'`` autograd."""
        try:
            self.memory_mode = MemoryMode(mode)
        except ValueError:
            raise ValueError(f"unknown memory mode {mode!r}; expected one of "
                             f"{[m.value for m in MemoryMode]}") from None

    def _run_trunk(self, xs: Sequence[Tensor], state: Optional[CallState]) -> List[Tensor]:
        ys = list(xs)
        for op in self.ops():
            ys = op(ys, state)
        return ys

    def inverse(self, ys: Sequence[Tensor]) -> List[Tensor]:
        """Invert the trunk (the tail is not invertible and is not involved)."""
        xs = list(ys)
        for op in reversed(self.ops()):
            xs = op.inverse(xs)
        return xs

    def forward(self, xs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Run the ops (and the tail) on the list of input scales."""
        xs = list(xs)
        if self.memory_mode is MemoryMode.REVERSIBLE and self.training and torch.is_grad_enabled():
            params = [p for p in self.parameters() if p.requires_grad]
            if params or any(x.requires_grad for x in xs):
                return _RevFunction.apply(self, len(xs), *xs, *params)
        ys = self._run_trunk(self._to_stream(xs), None)
        if self.tail is not None:
            return tuple(self.tail(ys))
        return tuple(y.to(xs[0].dtype) for y in ys)
