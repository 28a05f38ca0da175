"""The reversible sequential container, its recomputed tail, and the walk that resolves its policy per call.

Forward of the container: ``y = tail(op_{n-1}(... op_1(op_0(x))))``; inverse of the trunk:
``x = op_0^{-1}(... op_{n-1}^{-1}(y))`` (the tail is not invertible; it is recomputed).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd

from .backward import RevSegment, Segment
from .couplings import TriangularCoupling
from .op import RevOp, apply_transform, run_ops
from .policy import MemoryMode, RunPolicy
from .state import CallState

__all__ = ["RevSequential", "RecomputedPerScale", "random_couplings"]


class RecomputedPerScale(nn.Module):
    """A non-invertible per-scale tail ``O_h = M_h(y_h)``, recomputed in backward from its inputs (the trunk
    outputs, stored anyway: :func:`~revbifpn_mm.core.backward.tail_backward`). Children are
    ``recomp_transform_<h>`` (the official neck layout).
    """

    def __init__(self, transforms: Sequence[nn.Module]) -> None:
        super().__init__()
        for h, m in enumerate(transforms):
            self.add_module(f"recomp_transform_{h}", m)

    def transform(self, h: int) -> nn.Module:
        """The transform of scale ``h``."""
        return getattr(self, f"recomp_transform_{h}")

    def forward(self, ys: Sequence[Tensor], state: Optional[CallState] = None) -> List[Tensor]:
        """``O_h = M_h(y_h)``; compiled where ``state`` asks for it (a reversible call)."""
        return [apply_transform(self.transform(h), y, state) for h, y in enumerate(ys)]


@dataclass
class _Walk:
    """What one forward needs to know about the live modules, from one walk over them.

    Walked on every call, never cached: modules may be replaced after the first call (SyncBN conversion, a
    new dropout, a changed ``drop_prob``), and a stale view would, e.g., skip the RNG replay of a new random
    module: silently wrong gradients.
    """

    #: A module normalises with statistics of its current input, which amplifies the float32 reconstruction
    #: error: ``stream_dtype='auto'`` answers with float64 streams.
    input_statistics: bool = False
    #: A training module keeping running statistics that only torch's ``_BatchNorm`` family can freeze
    #: (InstanceNorm with ``track_running_stats``, mmcv's ``MMSyncBN``): the reversible path refuses it.
    unfreezable: Optional[nn.Module] = None
    #: Couplings that draw random numbers in training (a positive ``drop_prob``, a dropout with ``p > 0``).
    stochastic: set = field(default_factory=set)
    params: List[List[Tensor]] = field(default_factory=list)  # trainable parameters per segment
    training_bns: List[List[_BatchNorm]] = field(default_factory=list)  # BNs to freeze per segment
    compute_dtype: Optional[torch.dtype] = None  # the parameters' dtype, when they all share one

    @classmethod
    def of(cls, segments: Sequence[Sequence[nn.Module]]) -> "_Walk":
        walk = cls()
        dtypes = set()
        for segment in segments:
            params: List[Tensor] = []
            bns: List[_BatchNorm] = []
            stack = [(m, None) for m in segment]
            while stack:
                m, coupling = stack.pop()
                if m is None:
                    continue
                kind = _kind(type(m))
                if kind == _COUPLING:
                    coupling = m
                elif kind == _BN:
                    if m.training and m.track_running_stats:
                        bns.append(m)
                    walk.input_statistics = walk.input_statistics or m.training or m.running_mean is None
                elif kind == _INSTANCE_NORM:
                    walk.input_statistics = walk.input_statistics or m.training or not m.track_running_stats
                elif kind == _PER_SAMPLE_NORM:
                    walk.input_statistics = True
                if m.training:
                    if coupling is not None and ((m.__dict__.get("drop_prob") or 0.0) > 0.0
                                                 or (kind == _DROPOUT and m.p > 0)):
                        walk.stochastic.add(id(coupling))
                    if (kind != _BN and walk.unfreezable is None and m._buffers.get("running_mean") is not None
                            and m.__dict__.get("track_running_stats", True)):
                        walk.unfreezable = m
                for p in m._parameters.values():
                    if p is not None:
                        dtypes.add(p.dtype)
                        if p.requires_grad:
                            params.append(p)
                stack.extend((c, coupling) for c in m._modules.values())
            walk.params.append(params)
            walk.training_bns.append(bns)
        floating = [d for d in dtypes if d.is_floating_point]
        walk.compute_dtype = floating[0] if len(floating) == 1 else None
        return walk


_COUPLING, _BN, _INSTANCE_NORM, _PER_SAMPLE_NORM, _DROPOUT, _OTHER = range(6)


@functools.lru_cache(maxsize=None)
def _kind(cls: type) -> int:
    """What the walk needs to know about a module class (cached per class)."""
    return (_COUPLING if issubclass(cls, TriangularCoupling) else _BN if issubclass(cls, _BatchNorm)
            else _INSTANCE_NORM if issubclass(cls, _NormBase)
            else _PER_SAMPLE_NORM if issubclass(cls, (nn.GroupNorm, nn.LayerNorm, nn.RMSNorm))
            else _DROPOUT if issubclass(cls, _DropoutNd) else _OTHER)


def random_couplings(*modules: nn.Module) -> frozenset:
    """``id`` of every coupling inside ``modules`` that draws random numbers in its current mode
    (what a :class:`CallState` needs to record and replay their RNG states)."""
    return frozenset(_Walk.of([list(modules)]).stochastic)


class RevSequential(nn.Module):
    """A sequence of :class:`RevOp` s, optionally followed by a recomputed tail.

    Children are registered as ``"0"``, ``"1"``, ... and the tail as ``recomp_op`` (the official checkpoint
    layout of ``rev_stack``). The ops are grouped into *segments* of 3 (smaller segments hand their parameter
    gradients to autograd sooner), each one autograd Function in a reversible call.

    How it trains is its :attr:`policy` (:class:`~revbifpn_mm.core.RunPolicy`). In training with autograd
    enabled and ``memory_mode='reversible'``, only the outputs of the last reversible segment of a run are
    stored, and the backward reconstructs each op's inputs from its outputs. Segments named by
    ``plain_segments`` (the tail counting as the last one) run with ordinary autograd. Eval mode,
    ``torch.no_grad()`` and ``memory_mode='plain'`` take the ordinary path everywhere.

    The reversible path supports first-order gradients only: a backward with ``create_graph=True`` raises a
    ``RuntimeError``. Running statistics are updated once per step for torch's BatchNorm family; a training
    module that keeps other running statistics (InstanceNorm with ``track_running_stats``, mmcv's
    ``MMSyncBN``) is refused by the reversible forward with a ``ValueError``.

    Args:
        ops: The invertible operations, applied in order.
        tail: Optional non-invertible per-scale module applied to the trunk outputs.
        policy: The run policy (default: ``RunPolicy()``, fully reversible).
        **policy_fields: Fields of :class:`RunPolicy` (e.g. ``memory_mode='plain'``), applied on top of
            ``policy``.
    """

    def __init__(self, ops: Sequence[RevOp], tail: Optional[RecomputedPerScale] = None,
                 policy: Optional[RunPolicy] = None, **policy_fields: object) -> None:
        super().__init__()
        self.num_ops = len(ops)
        for i, op in enumerate(ops):
            self.add_module(str(i), op)
        self.recomp_op = tail
        self.policy = (policy or RunPolicy()).replace(**policy_fields)

    @property
    def num_segments(self) -> int:
        """Number of trunk segments (autograd Functions per fully reversible call)."""
        return -(-self.num_ops // 3)

    @property
    def max_plain_segments(self) -> int:
        """The largest useful :attr:`RunPolicy.plain_segments`: the trunk segments plus the tail."""
        return self.num_segments + (self.tail is not None)

    @property
    def tail(self) -> Optional[RecomputedPerScale]:
        """The recomputed non-invertible tail, or ``None``."""
        return self.recomp_op

    def ops(self) -> List[RevOp]:
        """The invertible ops in forward order."""
        return [getattr(self, str(i)) for i in range(self.num_ops)]

    @property
    def memory_mode(self) -> MemoryMode:
        """The policy's memory mode."""
        return self.policy.memory_mode  # type: ignore[return-value]

    def set_memory_mode(self, mode: Union[str, MemoryMode]) -> None:
        """Switch between ``'reversible'`` and ``'plain'`` autograd."""
        self.policy = self.policy.replace(memory_mode=mode)

    def inverse(self, ys: Sequence[Tensor]) -> List[Tensor]:
        """Invert the trunk (the tail is not invertible and is not involved)."""
        xs = list(ys)
        for op in reversed(self.ops()):
            xs = op.inverse(xs)
        return xs

    def resolved_stream_dtype(self) -> Optional[torch.dtype]:
        """The stream dtype of the next call (``'auto'`` resolved against the live modules)."""
        return self.policy.resolve_stream_dtype(_Walk.of(self._segments()).input_statistics)

    def _segments(self) -> List[List[nn.Module]]:
        """The ops of each trunk segment, then ``[tail]`` where there is one."""
        ops = self.ops()
        segments: List[List[nn.Module]] = [ops[k:k + 3] for k in range(0, self.num_ops, 3)]
        return segments + ([[self.tail]] if self.tail is not None else [])

    def forward(self, xs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Run the ops (and the tail) on the list of input scales."""
        xs = list(xs)
        segments = self._segments()
        walk = _Walk.of(segments)  # the policy resolved against the live modules, once per call
        stream = self.policy.resolve_stream_dtype(walk.input_statistics)
        h = xs if stream is None else [x.to(torch.promote_types(x.dtype, stream)) for x in xs]
        plain = self.policy.plain_mask(len(segments))
        input_grad = any(x.requires_grad for x in xs)
        if not (self.training and torch.is_grad_enabled() and not all(plain) and (any(walk.params) or input_grad)):
            h = run_ops(self.ops(), h, None)
            return tuple(self.tail(h) if self.tail is not None else (y.to(xs[0].dtype) for y in h))
        if walk.unfreezable is not None:
            bad = walk.unfreezable
            name = next(n for n, m in self.named_modules() if m is bad)
            raise ValueError(
                f"{name or 'the container'} ({type(bad).__name__}) updates running statistics that the "
                "reversible backward cannot freeze during its recomputation (they would be updated twice "
                "per step): use torch's BatchNorm / SyncBatchNorm or GroupNorm, set "
                "track_running_stats=False, or use memory_mode='plain'")
        state = CallState(xs, [p for ps in walk.params for p in ps], self.policy.reuse_buffers,
                          frozenset(walk.stochastic), self.policy.lean_recompute, walk.compute_dtype,
                          self.policy.compile_transforms)
        for step in self._schedule(segments, plain, walk, state, input_grad, xs[0].dtype):
            if isinstance(step, Segment):
                h = list(RevSegment.apply(step, len(h), *h, *step.params))
            else:
                ops, grad = step
                with torch.set_grad_enabled(grad):
                    h = run_ops(ops, h, None)
        if self.tail is not None:
            return tuple(self.tail(h)) if plain[-1] else tuple(h)
        return tuple(y.to(xs[0].dtype) for y in h)  # no-op casts unless the last segment was plain

    def _schedule(self, segments: List[List[nn.Module]], plain: List[bool], walk: _Walk, state: CallState,
                  input_grad: bool, out_dtype: torch.dtype) -> List[Union[Segment, Tuple[List[nn.Module], bool]]]:
        """What a reversible call runs, in order: a :class:`Segment` per reversible segment (the tail
        joins the last one, or is a segment of its own after a plain trunk), and ``(ops, grad)`` for a
        plain segment (``grad=True``) or a frozen one below everything trainable (no backward at all).
        A plain tail is not scheduled: the caller applies it."""
        n = self.num_segments
        tail = self.tail if self.tail is not None and not plain[n] else None
        steps: List[Union[Segment, Tuple[List[nn.Module], bool]]] = []
        below: Optional[Segment] = None  # the previous segment of the current reversible run
        grad = input_grad  # whether the running activations require grad
        for k in range(n):
            last, params = k == n - 1, walk.params[k]
            if plain[k] or (not last and not params and not grad):
                steps.append((segments[k], plain[k]))
                below = None
            else:
                joins = tail is not None and last
                below = Segment(segments[k], state, params + (walk.params[n] if joins else []),
                                walk.training_bns[k] + (walk.training_bns[n] if joins else []),
                                stores=last or plain[k + 1], below=below, tail=tail if joins else None,
                                out_dtype=out_dtype if last and self.tail is None else None)
                steps.append(below)
            grad = grad or bool(params)
        if tail is not None and plain[n - 1]:
            steps.append(Segment([], state, walk.params[n], walk.training_bns[n], stores=True, tail=tail))
        reversible = [s for s in steps if isinstance(s, Segment)]
        if reversible:
            reversible[-1].begins_backward = True
        return steps
