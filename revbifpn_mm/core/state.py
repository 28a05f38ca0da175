"""Per-call state of a reversible forward: RNG replay, autocast replay, gradients.

Everything that the backward pass of one reversible call needs besides the
stored output tensors lives in a :class:`CallState` attached to the autograd
context of that call, never on modules. Two forwards before one backward
therefore each replay their own random masks and autocast settings.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CallState", "frozen_bn_statistics", "is_recomputing", "recomputing"]

_RECOMPUTING: contextvars.ContextVar[bool] = contextvars.ContextVar("revbifpn_recomputing", default=False)


def is_recomputing() -> bool:
    """True while a reversible backward recomputes a transform's forward (inside :func:`vjp`).

    Transforms may then trade compute for memory (e.g. checkpoint their elementwise
    parts): BatchNorm running statistics are frozen during that recomputation (see
    :func:`frozen_bn_statistics`), so a nested recomputation cannot update them twice.
    """
    return _RECOMPUTING.get()


@contextlib.contextmanager
def recomputing() -> Iterator[None]:
    """Context in which :func:`is_recomputing` is True."""
    token = _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(token)

_RngState = Tuple[Tensor, Dict[int, Tensor]]


@functools.lru_cache(maxsize=None)
def _holds(dst: torch.dtype, src: torch.dtype) -> bool:
    """Whether ``dst + src`` promotes to ``dst`` (an in-place update of a ``dst`` tensor is exact).

    Cached: ``torch.promote_types`` goes through the dispatcher, and the backward asks
    this once per stream update (about 200 times per S0 step).
    """
    return torch.promote_types(dst, src) == dst


class CallState:
    """State captured during one reversible forward call and consumed by its backward.

    Attributes:
        device_type: ``'cpu'`` or ``'cuda'`` (the device type of the call's inputs).
        autocast_enabled: Whether autocast was enabled for ``device_type`` in the forward.
        autocast_dtype: The autocast dtype of the forward for ``device_type``.
        grads: Accumulated parameter gradients keyed by ``id(param)``.
        wanted: ``id`` of every parameter whose gradient the call must return.

    The backward pass also records which stream tensors it *owns* (:meth:`own`): buffers
    it allocated itself and that nothing outside it can see. Reconstruction
    (``x = y - T(...)``) and gradient accumulation (``dx = dx + J^T dy``) update owned
    tensors in place and allocate only for the first update of a foreign tensor, so
    that each scale's activation and gradient exist once instead of once per op.
    """

    def __init__(self, inputs: Sequence[Tensor], params: Sequence[Tensor] = ()) -> None:
        dev = inputs[0].device
        self.device_type = dev.type
        self.cuda_devices: List[int] = sorted(
            {t.device.index for t in inputs if t.is_cuda and t.device.index is not None})
        self.autocast_enabled = torch.is_autocast_enabled(self.device_type)
        self.autocast_dtype = torch.get_autocast_dtype(self.device_type)
        self._rng_stack: List[Optional[_RngState]] = []
        self._cursor = 0
        self.grads: Dict[int, Tensor] = {}
        self.wanted = {id(p) for p in params}
        self._owned: Dict[int, "weakref.ref[Tensor]"] = {}

    # ----------------------------------------------------------------- RNG
    def push_rng(self, stochastic: bool) -> None:
        """Record the RNG state before a (possibly) stochastic part runs.

        A ``None`` entry is pushed for deterministic parts, so that pushes and pops
        always pair up in last-in-first-out order (forward order reversed in the
        backward pass).
        """
        if not stochastic:
            self._rng_stack.append(None)
            return
        cpu = torch.get_rng_state()
        cuda = {d: torch.cuda.get_rng_state(d) for d in self.cuda_devices}
        self._rng_stack.append((cpu, cuda))

    def begin_backward(self) -> None:
        """Start a backward pass: replay from the last recorded state, fresh gradients."""
        self._cursor = len(self._rng_stack)
        self.grads = {}
        self._owned = {}

    # ----------------------------------------------------- stream buffers
    def own(self, t: Tensor) -> Tensor:
        """Mark ``t`` as a private buffer of this backward pass (later updates may be in place)."""
        self._owned[id(t)] = weakref.ref(t)
        return t

    def owns(self, t: Tensor) -> bool:
        """Whether ``t`` (or the tensor it is a view of) is a private buffer of this backward."""
        for cand in (t, t._base):
            if cand is not None:
                ref = self._owned.get(id(cand))
                if ref is not None and ref() is cand:
                    return True
        return False

    def sub(self, x: Tensor, t: Tensor) -> Tensor:
        """``x - t``: in place when ``x`` is owned, else into a new owned tensor."""
        return self._update(x, t, -1)

    def add(self, x: Tensor, t: Tensor) -> Tensor:
        """``x + t``: in place when ``x`` is owned, else into a new owned tensor."""
        return self._update(x, t, 1)

    def _update(self, x: Tensor, t: Tensor, alpha: int) -> Tensor:
        # x + alpha * t with alpha = +-1 is exact, so in place and out of place agree bitwise
        if self.owns(x) and _holds(x.dtype, t.dtype):
            # Through ``.data``: the version counter is left alone. An owned stream may be
            # one half of a tensor whose *other* half a pending recomputed graph has saved
            # (the reversible block's halves share one version counter); the regions are
            # disjoint and owned buffers are saved by nobody else, so the update is safe.
            data = x.data
            if t.dtype != x.dtype and x.device.type == "cpu" and x.dim() > 1 and x.shape[1] > 1:
                # CPU kernels cast the whole of ``t`` into a temporary first: bound it by chunks
                for xc, tc in zip(data.tensor_split(8, dim=1), t.tensor_split(8, dim=1)):
                    xc.add_(tc, alpha=alpha)
            else:
                data.add_(t, alpha=alpha)
            return x
        return self.own(torch.add(x, t, alpha=alpha))

    @contextlib.contextmanager
    def replay_rng(self) -> Iterator[None]:
        """Re-install the RNG state recorded by the matching :meth:`push_rng`.

        The global RNG streams are forked, so the replay does not disturb them.
        """
        self._cursor -= 1
        if self._cursor < 0:
            raise RuntimeError("reversible backward: RNG replay out of sync with the forward")
        entry = self._rng_stack[self._cursor]
        if entry is None:
            yield
            return
        cpu, cuda = entry
        with torch.random.fork_rng(devices=list(cuda.keys()), enabled=True,
                                   device_type="cuda"):
            torch.set_rng_state(cpu)
            for d, s in cuda.items():
                torch.cuda.set_rng_state(s, d)
            yield

    # ------------------------------------------------------------ autocast
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context that reproduces the forward's autocast state."""
        return torch.autocast(self.device_type, dtype=self.autocast_dtype,
                              enabled=self.autocast_enabled)

    # --------------------------------------------------------------- grads
    def accumulate(self, params: Sequence[Tensor], grads: Sequence[Optional[Tensor]]) -> None:
        """Add parameter gradients of one recomputed piece to the running sums."""
        for p, g in zip(params, grads):
            if g is None:
                continue
            key = id(p)
            if key not in self.wanted:
                continue
            prev = self.grads.get(key)
            if prev is None:
                self.grads[key] = g
            else:
                prev.add_(g)


@contextlib.contextmanager
def frozen_bn_statistics(*modules: nn.Module) -> Iterator[None]:
    """Run BatchNorm layers in training mode without touching their running statistics.

    Inside the context every training-mode BatchNorm of ``modules`` still normalises
    with the statistics of the current batch, but neither ``running_mean``,
    ``running_var`` nor ``num_batches_tracked`` is updated. The reversible backward
    wraps its recomputation in this context so that each training step updates the
    running statistics exactly once (standard PyTorch semantics), unlike the official
    implementation which updates them a second time during recomputation.
    """
    toggled = []
    for m in (sub for module in modules for sub in module.modules()):
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
            m.track_running_stats = False
            toggled.append(m)
    try:
        yield
    finally:
        for m in toggled:
            m.track_running_stats = True
