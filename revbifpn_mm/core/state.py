"""Per-call state of a reversible forward, consumed by its backward: :class:`CallState` and its independent
parts (RNG replay, autocast replay, the gradient sink, the stream arithmetic). It lives on the autograd
context of its call, never on modules, so two forwards before one backward stay correct (docs/design.md).
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["CallState", "RngReplay", "AutocastReplay", "GradSink", "Streams"]

_RngState = Tuple[Tensor, Dict[int, Tensor]]


class RngReplay:
    """RNG states recorded before each coupling of a forward, replayed last-in-first-out (a ``None`` entry
    stands for a deterministic coupling, so that pushes and replays always pair up)."""

    def __init__(self, cuda_devices: Sequence[int]) -> None:
        self.cuda_devices = list(cuda_devices)
        self._stack: List[Optional[_RngState]] = []
        self._cursor = 0

    def push(self, stochastic: bool) -> None:
        """Record the RNG state before a coupling runs (only if it draws random numbers)."""
        self._stack.append((torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in self.cuda_devices})
                           if stochastic else None)

    def rewind(self) -> None:
        """Start a backward pass: replay from the last recorded state."""
        self._cursor = len(self._stack)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Re-install the state recorded by the matching :meth:`push` (in a fork of the global RNG streams)."""
        self._cursor -= 1
        if self._cursor < 0:
            raise RuntimeError("reversible backward: RNG replay out of sync with the forward")
        entry = self._stack[self._cursor]
        if entry is None:  # the coupling draws no random numbers: nothing to re-install
            yield
            return
        cpu, cuda = entry
        with torch.random.fork_rng(devices=list(cuda), device_type="cuda"):
            torch.set_rng_state(cpu)
            for d, s in cuda.items():
                torch.cuda.set_rng_state(s, d)
            yield


class AutocastReplay:
    """The forward's autocast state on ``device_type``; calling it gives a context that re-enters it."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type)

    def __call__(self) -> contextlib.AbstractContextManager:
        if torch.is_autocast_enabled(self.device_type) == self.enabled and (
                not self.enabled or torch.get_autocast_dtype(self.device_type) == self.dtype):
            return contextlib.nullcontext()  # already the forward's state
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


class GradSink:
    """Sums the parameter gradients of recomputed pieces, for the parameters a call returns."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.wanted = {id(p) for p in params}
        self.by_id: Dict[int, Tensor] = {}

    def add(self, params: Sequence[Tensor], grads: Sequence[Optional[Tensor]]) -> None:
        """Add ``grads`` (None entries are skipped) to the sums of ``params``."""
        for p, g in zip(params, grads):
            if g is not None and id(p) in self.wanted:
                prev = self.by_id.get(id(p))
                self.by_id[id(p)] = g if prev is None else prev.add_(g)

    def pop(self, param_ids: Sequence[int]) -> List[Optional[Tensor]]:
        """The sums of these parameters (None where nothing arrived), removed from the sink."""
        return [self.by_id.pop(pid, None) for pid in param_ids]


@functools.lru_cache(maxsize=None)
def _holds(dst: torch.dtype, src: torch.dtype) -> bool:
    """Whether ``dst + src`` promotes to ``dst`` (cached: ``promote_types`` goes through the dispatcher)."""
    return torch.promote_types(dst, src) == dst


class Streams:
    """Arithmetic on the residual streams of a backward pass: out of place (``reuse=False``, the algorithm as
    written), or in place on the tensors this backward allocated itself (*owns*).

    With ``reuse``, ``x -/+ t`` updates an owned ``x`` in place (a foreign ``x`` is copied once) and two halves
    of one owned tensor are joined without a copy. Results are bitwise those of ``reuse=False``.
    """

    #: A mixed-dtype in-place add on the CPU first casts the whole of ``t`` into a temporary;
    #: above this many elements the update runs in 8 channel chunks to bound that temporary.
    CHUNK_NUMEL = 1 << 20

    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self._owned: Dict[int, "weakref.ref[Tensor]"] = {}

    def own(self, t: Tensor) -> Tensor:
        """Mark ``t`` as a buffer of this backward (with ``reuse``; returns ``t``)."""
        if self.reuse:
            self._owned[id(t)] = weakref.ref(t)
        return t

    def owns(self, t: Tensor) -> bool:
        """Whether ``t`` (or the tensor it is a view of) is a buffer of this backward."""
        for cand in (t, t._base):
            if cand is not None:
                ref = self._owned.get(id(cand))
                if ref is not None and ref() is cand:
                    return True
        return False

    def sub(self, x: Tensor, t: Tensor) -> Tensor:
        """``x - t``."""
        return self._update(x, t, -1) if self.reuse else torch.sub(x, t)

    def add(self, x: Tensor, t: Tensor) -> Tensor:
        """``x + t``."""
        return self._update(x, t, 1)

    def _update(self, x: Tensor, t: Tensor, alpha: int) -> Tensor:
        if not (self.owns(x) and _holds(x.dtype, t.dtype)):
            return self.own(torch.add(x, t, alpha=alpha))
        # Through ``.data``, leaving the version counter alone: an owned stream may be one half of a tensor
        # whose *other*, disjoint half a pending recomputed graph has saved (the halves share the counter).
        data = x.data
        if t.dtype != x.dtype and x.device.type == "cpu" and t.numel() > self.CHUNK_NUMEL and x.dim() > 1:
            for xc, tc in zip(data.tensor_split(8, dim=1), t.tensor_split(8, dim=1)):
                xc.add_(tc, alpha=alpha)
        else:
            data.add_(t, alpha=alpha)
        return x

    def join(self, a: Tensor, b: Tensor) -> Tensor:
        """``cat([a, b], dim=1)``."""
        base = a._base
        joined = (a.shape[0], a.shape[1] + b.shape[1], *a.shape[2:])
        if (base is not None and b._base is base and self.owns(a) and base.is_contiguous()
                and base.shape == joined and a.data_ptr() == base.data_ptr()
                and b.data_ptr() == base[:, a.shape[1]:].data_ptr()):
            return base
        return self.own(torch.cat([a, b], dim=1))


class CallState:
    """State captured during one reversible forward call and consumed by its backward.

    Attributes:
        rng: The RNG replay of the call's stochastic couplings.
        autocast: The forward's autocast state.
        grads: The parameter gradients of the backward.
        streams: Stream arithmetic of the backward (:class:`Streams`).
        stochastic: ``id`` of every coupling that draws random numbers in this call.
        lean: Whether recomputed tail transforms run their ``lean_forward``.
        compiled: Whether the transforms run compiled (``RunPolicy.compile_transforms``).
        compute_dtype: The dtype every transform computes in (their parameters' one), or None
            where the parameters do not share one (each transform is then asked).
    """

    def __init__(self, inputs: Sequence[Tensor], params: Sequence[Tensor] = (), reuse_buffers: bool = True,
                 stochastic: frozenset = frozenset(), lean: bool = False,
                 compute_dtype: Optional[torch.dtype] = None, compiled: bool = False) -> None:
        self.rng = RngReplay(sorted({t.device.index for t in inputs if t.is_cuda and t.device.index is not None}))
        self.autocast = AutocastReplay(inputs[0].device.type)
        self.grads = GradSink(params)
        self.reuse_buffers = reuse_buffers
        self.streams = Streams(reuse_buffers)
        self.stochastic = stochastic
        self.lean = lean
        self.compute_dtype = compute_dtype
        self.compiled = compiled

    def begin_backward(self) -> None:
        """Start a backward pass: replay from the last recorded RNG state, fresh buffers."""
        self.rng.rewind()
        self.streams = Streams(self.reuse_buffers)
