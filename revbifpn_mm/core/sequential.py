"""The reversible sequential container and its per-segment autograd Functions."""
from __future__ import annotations

import warnings
from enum import Enum
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from .op import RevOp, apply_transform, submodules, vjp
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
        """Gradients with respect to the tail inputs ``ys`` (parameters go to ``state``).

        They are fresh buffers, handed to ``state`` so that the trunk's backward
        accumulates into them in place (unless one aliases its incoming gradient).
        """
        dys = []
        for h, (y, d) in enumerate(zip(ys, douts)):
            dy = vjp(self.transform(h), y, d, state)
            dys.append(dy if _share_storage([dy], [d]) else state.own(dy))
        return dys


def _parse_stream_dtype(value: Union[None, str, torch.dtype]) -> Union[None, str, torch.dtype]:
    """Validate a ``stream_dtype`` argument; names become torch dtypes, ``'auto'`` stays."""
    if value is None or value == "auto":
        return value
    names = {"float64": torch.float64, "float32": torch.float32}
    if isinstance(value, str) and value in names:
        return names[value]
    if value in names.values():
        return value
    raise ValueError(f"stream_dtype must be 'auto', 'float64', 'float32' or None, got {value!r}")


def _run_ops(ops: Sequence[RevOp], xs: Sequence[Tensor], state: Optional[CallState]) -> List[Tensor]:
    """Apply ``ops`` in order (recording on ``state`` when given)."""
    ys = list(xs)
    for op in ops:
        ys = op(ys, state)
    return ys


def _share_storage(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Whether any tensor of ``a`` shares its storage with a tensor of ``b``."""
    ptrs = {t.untyped_storage().data_ptr() for t in b}
    return any(t.untyped_storage().data_ptr() in ptrs for t in a)


class InPlaceReuseDisabledWarning(RuntimeWarning):
    """The reversible backward cannot reuse its stored outputs in place on this torch build."""


_warned_no_keep_graph_query = False


def _graph_retained() -> bool:
    """Whether the running backward keeps the graph (``retain_graph``/``create_graph``).

    Asks the autograd engine (the query AOTAutograd uses to free its saved tensors);
    where it is unavailable the answer is True, i.e. the saved tensors stay untouched
    (gradients stay exact, the in-place reuse of the stored outputs is lost), and an
    :class:`InPlaceReuseDisabledWarning` says so once per process.
    """
    global _warned_no_keep_graph_query
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if query is not None:
        return bool(query())
    if not _warned_no_keep_graph_query:
        _warned_no_keep_graph_query = True
        warnings.warn(
            f"revbifpn_mm: torch {torch.__version__} has no torch._C._autograd."
            "_get_current_graph_task_keep_graph, so the reversible backward cannot tell whether the "
            "graph is retained and never updates its stored outputs in place: gradients are exact, "
            "but the backward keeps one extra copy of the trunk outputs", InPlaceReuseDisabledWarning,
            stacklevel=2)
    return True


def _uses_input_statistics(m: nn.Module) -> bool:
    """Whether ``m`` normalises with statistics of its current input (in its current mode).

    BatchNorm in training mode (or without running statistics) does, with the batch's
    statistics; InstanceNorm, GroupNorm, LayerNorm and RMSNorm do with per-sample ones. A small
    error in the input (the float32 reconstruction error of a reversible backward) is
    then amplified in the gradients, which ``stream_dtype='auto'`` counters.
    """
    if isinstance(m, _BatchNorm):
        return m.training or m.running_mean is None
    if isinstance(m, _NormBase):  # InstanceNorm*
        return m.training or not m.track_running_stats
    return isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.RMSNorm))


def _unfreezable_statistics(m: nn.Module) -> bool:
    """Whether ``m`` updates running statistics that :func:`frozen_bn_statistics` cannot freeze.

    Only torch's ``_BatchNorm`` family can run without updating them; any other module that
    keeps a ``running_mean`` (InstanceNorm with ``track_running_stats``, mmcv's ``MMSyncBN``,
    a custom BN) would update them a second time during the recomputation.
    """
    if isinstance(m, _BatchNorm) or not m.training:
        return False
    return m._buffers.get("running_mean") is not None and bool(m.__dict__.get("track_running_stats", True))


class _Tape:
    """Per-call state shared by the segments of one reversible call.

    ``handoff[k]`` carries the outputs of segment ``k`` reconstructed by segment ``k + 1``'s
    backward, so that no segment but the last stores anything.
    """

    def __init__(self, state: CallState, out_dtype: torch.dtype) -> None:
        self.state = state
        self.out_dtype = out_dtype
        self.handoff: dict = {}


class _RevSegment(torch.autograd.Function):
    """Runs one segment of a :class:`RevSequential` without storing its activations.

    Inputs are ``(container, tape, k, n_in, *xs, *params)``. The segment's parameters
    are inputs of the Function, so autograd sees them: they receive gradients even when
    the image does not require grad, ``torch.autograd.grad`` works on them, and each
    segment hands its parameter gradients to autograd as soon as its backward is done
    (DDP's hooks fire per segment, and no full-model gradient buffer is held). Only
    the last segment saves tensors: the trunk outputs (``save_for_backward``). Every
    other segment receives its outputs, reconstructed, from the next segment's backward.
    The last segment's backward updates the saved outputs in place (they are its first
    working buffers) only when they are private (neither returned nor inputs) and the
    engine does not keep the graph; otherwise it leaves them untouched.
    """

    @staticmethod
    def forward(ctx, container: "RevSequential", tape: _Tape, k: int, n_in: int,  # type: ignore[override]
                *args: Tensor):
        xs, params = list(args[:n_in]), args[n_in:]
        last = k == container.num_segments - 1
        with torch.no_grad():
            ys = _run_ops(container.segment(k), xs, tape.state)
            if last:
                outs = container.tail(ys) if container.tail is not None else [y.to(tape.out_dtype) for y in ys]
                ctx.save_for_backward(*ys)
                # The backward may reuse the saved outputs as its working buffers when nobody
                # else can see them: not returned, not the inputs, and no retained graph.
                ctx.private = not _share_storage(ys, list(outs) + xs)
            else:
                outs = ys
        ctx.container, ctx.tape, ctx.k, ctx.n_in, ctx.last = container, tape, k, n_in, last
        ctx.in_dtypes = [x.dtype for x in xs]
        ctx.param_ids = [id(p) for p in params]
        ctx.set_materialize_grads(True)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *douts: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # the engine enables grad mode in backward only for create_graph=True
            raise RuntimeError(
                "double backward (create_graph=True, e.g. a gradient penalty) is not supported through "
                "the reversible path of RevSequential: its backward reconstructs activations without "
                "building a graph, so the second-order term would silently be dropped. Train this "
                "model with memory_mode='plain' (or call set_memory_mode('plain') on it) for such losses")
        container: RevSequential = ctx.container
        tape: _Tape = ctx.tape
        state = tape.state
        if ctx.last:
            state.begin_backward()
            ys = list(ctx.saved_tensors)
            if ctx.private and not _graph_retained():
                ys = [state.own(y) for y in ys]  # freed after this backward anyway: update in place
        else:
            ys = tape.handoff.pop(ctx.k)
        ops = container.segment(ctx.k)
        modules = list(ops) + ([container.tail] if ctx.last and container.tail is not None else [])
        need_inputs = any(ctx.needs_input_grad[4:4 + ctx.n_in])
        with torch.no_grad(), frozen_bn_statistics(*modules):
            if ctx.last and container.tail is not None:
                dys = container.tail.backward_pass(ys, list(douts), state)
            else:
                dys = list(douts)
            del douts  # the op lists below are consumed, so replaced tensors are freed at once
            # Without an input gradient, ops below the first trainable one (frozen
            # stages, the parameter-free stem) need neither reconstruction nor backward.
            stop = 0 if need_inputs else next(
                (i for i, op in enumerate(ops) if any(p.requires_grad for p in op.parameters())), len(ops))
            for op in reversed(ops[stop:]):
                ys, dys = op.backward_pass(ys, dys, state)
        if need_inputs and ctx.k > 0:
            tape.handoff[ctx.k - 1] = ys
        dxs = [dx.to(dt) if need_inputs and need else None
               for dx, dt, need in zip(dys, ctx.in_dtypes, ctx.needs_input_grad[4:4 + ctx.n_in])]
        pgrads = [state.grads.pop(pid, None) for pid in ctx.param_ids]
        return (None, None, None, None, *dxs, *pgrads)


class RevSequential(nn.Module):
    """A sequence of :class:`RevOp` s, optionally followed by a recomputed tail.

    Children are registered as ``"0"``, ``"1"``, ... and the tail as ``recomp_op``
    (the official checkpoint layout of ``rev_stack``).

    In training with autograd enabled and :attr:`memory_mode` ``'reversible'``, one
    autograd Function runs everything and stores only the trunk outputs; the backward
    pass reconstructs each op's inputs from its outputs. Otherwise (``'plain'`` mode,
    ``eval()``, or ``torch.no_grad()``) the ops run with ordinary autograd.

    The residual streams between ops can be carried in float64 while every transform
    computes in its parameters' dtype. Additive couplings are then inverted to float64
    round-off, so the inputs recomputed in the backward pass are bitwise those of the
    forward (fp32 or autocast) and the reversible gradients match plain autograd to the
    transforms' own precision. With streams in the input's dtype (float32) the
    reconstruction error grows towards the stem (about 5e-5 relative for RevBiFPN-S3):
    harmless with frozen BatchNorm (the detection setting: 7e-8 relative gradient
    error), but training-mode BatchNorm amplifies it in the gradients of the first
    layers (4.5e-3 for S3 at 256x256, batch 2). ``'auto'`` (default) therefore uses
    float64 streams exactly when a module of the container normalises with statistics
    of its current input (a BatchNorm in training mode; GroupNorm, InstanceNorm and
    LayerNorm always, since they normalise each sample with its own statistics) and
    the input's dtype otherwise (half the stored bytes).

    The reversible path supports first-order gradients only: a backward with
    ``create_graph=True`` (double backward, e.g. a gradient penalty) raises a
    ``RuntimeError``; use ``memory_mode='plain'`` for such losses. Running statistics
    are updated once per step for torch's BatchNorm family; a training module that
    keeps other running statistics (InstanceNorm with ``track_running_stats``, mmcv's
    ``MMSyncBN``) is refused by the reversible forward with a ``ValueError``.

    Args:
        ops: The invertible operations, applied in order.
        tail: Optional non-invertible per-scale module applied to the trunk outputs.
        memory_mode: ``'reversible'`` (default) or ``'plain'``.
        stream_dtype: dtype of the residual streams: ``'auto'`` (default, see above),
            ``'float64'`` / ``'float32'`` or the torch dtype, or ``None`` (the input's dtype).
        ops_per_segment: Ops per autograd Function in reversible mode (parameter
            gradients are released to autograd segment by segment). Defaults to 3.
    """

    def __init__(self, ops: Sequence[RevOp], tail: Optional[RecomputedPerScale] = None,
                 memory_mode: Union[str, MemoryMode] = MemoryMode.REVERSIBLE,
                 stream_dtype: Union[None, str, torch.dtype] = "auto", ops_per_segment: int = 3) -> None:
        super().__init__()
        self.num_ops = len(ops)
        for i, op in enumerate(ops):
            self.add_module(str(i), op)
        self.recomp_op = tail
        self.memory_mode = MemoryMode(memory_mode)
        self.stream_dtype = _parse_stream_dtype(stream_dtype)
        if ops_per_segment < 1:
            raise ValueError(f"ops_per_segment must be >= 1, got {ops_per_segment}")
        self.ops_per_segment = ops_per_segment

    @property
    def num_segments(self) -> int:
        """Number of reversible segments (autograd Functions per call)."""
        return -(-self.num_ops // self.ops_per_segment)

    def segment(self, k: int) -> List[RevOp]:
        """The ops of segment ``k``."""
        return self.ops()[k * self.ops_per_segment:(k + 1) * self.ops_per_segment]

    def resolved_stream_dtype(self) -> Optional[torch.dtype]:
        """The stream dtype of the next call (``'auto'`` resolved against the BN modes)."""
        if self.stream_dtype != "auto":
            return self.stream_dtype  # type: ignore[return-value]
        # read from the live modules on every call: BN layers may be replaced (e.g. SyncBN conversion)
        amplifies = any(_uses_input_statistics(m) for m in submodules(self))
        return torch.float64 if amplifies else None

    def _to_stream(self, xs: Sequence[Tensor]) -> List[Tensor]:
        dtype = self.resolved_stream_dtype()
        if dtype is None:
            return list(xs)
        return [x.to(torch.promote_types(x.dtype, dtype)) for x in xs]

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
                return self._forward_reversible(xs, params)
        ys = _run_ops(self.ops(), self._to_stream(xs), None)
        if self.tail is not None:
            return tuple(self.tail(ys))
        return tuple(y.to(xs[0].dtype) for y in ys)

    def _forward_reversible(self, xs: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, ...]:
        bad = next((m for m in submodules(self) if _unfreezable_statistics(m)), None)
        if bad is not None:
            name = next(n for n, m in self.named_modules() if m is bad)
            raise ValueError(
                f"{name or 'the container'} ({type(bad).__name__}) updates running statistics that the "
                "reversible backward cannot freeze during its recomputation (they would be updated twice "
                "per step): use torch's BatchNorm / SyncBatchNorm or GroupNorm, set "
                "track_running_stats=False, or use memory_mode='plain'")
        tape = _Tape(CallState(xs, params), xs[0].dtype)
        h = self._to_stream(xs)
        for k in range(self.num_segments):
            last = k == self.num_segments - 1
            seg_params = [p for op in self.segment(k) for p in op.parameters() if p.requires_grad]
            if last and self.tail is not None:
                seg_params += [p for p in self.tail.parameters() if p.requires_grad]
            if not last and not seg_params and not any(t.requires_grad for t in h):
                with torch.no_grad():  # frozen segment below everything trainable: no backward at all
                    h = _run_ops(self.segment(k), h, None)
                continue
            h = _RevSegment.apply(self, tape, k, len(h), *h, *seg_params)
        return tuple(h)
