"""Per-call state of a reversible forward: RNG replay, autocast replay, gradients.

Everything that the backward pass of one reversible call needs besides the
stored output tensors lives in a :class:`CallState` attached to the autograd
context of that call, never on modules. Two forwards before one backward
therefore each replay their own random masks and autocast settings.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CallState", "frozen_bn_statistics"]

_RngState = Tuple[Tensor, Dict[int, Tensor]]


class CallState:
    """State captured during one reversible forward call and consumed by its backward.

    Attributes:
        device_type: ``'cpu'`` or ``'cuda'`` (the device type of the call's inputs).
        autocast_enabled: Whether autocast was enabled for ``device_type`` in the forward.
        autocast_dtype: The autocast dtype of the forward for ``device_type``.
        grads: Accumulated parameter gradients keyed by ``id(param)``.
        wanted: ``id`` of every parameter whose gradient the call must return.
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
        """Start a backward pass: replay from the last recorded state, fresh gradients.

        Records are read, not consumed, so a graph kept with ``retain_graph=True``
        can be back-propagated again.
        """
        self._cursor = len(self._rng_stack)
        self.grads = {}

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
