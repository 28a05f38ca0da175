"""The run policy: how a :class:`~revbifpn_mm.core.RevSequential` trains.

One frozen object carries every execution option. None of them changes the function the
network computes or its gradients (beyond float round-off where stated); they trade memory
for time. The model (``RevBiFPN``) and the mm backbone take the same fields as keyword
arguments and hand them over as one :class:`RunPolicy`; the container resolves it once per
forward (:meth:`RevSequential.forward`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional, Union

import torch

__all__ = ["MemoryMode", "RunPolicy", "PLAIN_FROM"]

#: Ends of the container that :attr:`RunPolicy.plain_segments` may be counted from.
PLAIN_FROM = ("output", "input")
_STREAM_NAMES = {"float64": torch.float64, "float32": torch.float32}


class MemoryMode(str, Enum):
    """``'reversible'``: keep only the outputs, reconstruct the rest in the backward.
    ``'plain'``: ordinary autograd everywhere (debugging, double backward, a reference)."""

    REVERSIBLE = "reversible"
    PLAIN = "plain"


def _stream_dtype(value: Any) -> Union[None, str, torch.dtype]:
    if value is None or value == "auto" or value in _STREAM_NAMES.values():
        return value
    if isinstance(value, str) and value in _STREAM_NAMES:
        return _STREAM_NAMES[value]
    raise ValueError(f"stream_dtype must be 'auto', 'float64', 'float32' or None, got {value!r}")


@dataclass(frozen=True)
class RunPolicy:
    """Execution options of a reversible container, resolved once per forward.

    The model constructors take ``memory_mode``, ``stream_dtype``, ``plain_segments`` and
    ``compile_transforms``; the other fields are for experiments and tests and are set on a
    built model with ``set_policy``.

    Attributes:
        memory_mode: ``'reversible'`` (default): only the trunk outputs are kept for the
            backward, which reconstructs every other activation from them (activation memory
            independent of depth). ``'plain'``: ordinary autograd for the whole container,
            e.g. for double backward (``create_graph=True``), which the reversible path refuses.
        stream_dtype: dtype of the residual streams between reversible ops. ``'auto'``
            (default): float64 while a module of the container normalises with statistics of
            its current input (a BatchNorm in training mode; GroupNorm, InstanceNorm, LayerNorm
            always), where the float32 reconstruction error would be amplified in the
            gradients; the input's dtype otherwise (frozen BN, the detection setting: half the
            stored bytes). ``'float64'``, ``'float32'`` (or the torch dtype), or ``None`` (the
            input's dtype). Transforms always compute in their parameters' dtype.
        lean_recompute: While the backward recomputes the non-invertible tail (RevBiFPN's
            per-scale output MBConvs, whose full-resolution recomputation sets the peak of the
            backward), run each transform's ``lean_forward`` where it has one: it keeps a
            smaller working set (the MBConv's middle is checkpointed) for one more evaluation
            of cheap elementwise layers. Gradients are bitwise the same. Default True.
        plain_segments: How many of the container's segments (each the unit of one autograd
            Function in a reversible call; the recomputed tail counts as one more, the last)
            train with ordinary autograd, keeping their activations, counted from
            ``plain_from``. ``0`` (default) is fully reversible; all of them (or more) is the
            same as ``memory_mode='plain'``. The memory kept rises with every segment; the step
            time falls until keeping more stops paying (measured per config by the planner):
            a card with memory to spare buys back the recomputation.
        plain_from: ``'output'`` (default: the tail and the last segments, whose recomputation
            costs the most time per byte kept) or ``'input'``.
        reuse_buffers: Let the backward update the stream tensors it allocated itself in place
            and reuse the stored outputs as its first working buffers (each scale's activation
            and gradient then exist about once at a time). ``False`` runs the same algorithm
            out of place (for tests and debugging). Default True.
        compile_transforms: Run the transforms the reversible call evaluates (each MBConv and
            RevSilo transform, in the forward and in the backward's recomputation) through
            ``torch.compile``, one compiled function per distinct block signature with dynamic
            shapes (:mod:`revbifpn_mm.core.compiled`); the container itself stays eager. Fewer,
            fused kernels per step, for a first step that compiles (minutes on a CPU). Gradients
            and BN statistics equal the eager ones to float32 round-off (fusion reorders sums).
            Transforms that draw random numbers (drop path in training) and the recomputed tail's
            ``lean_forward`` run eager; plain segments
            and ``memory_mode='plain'`` run eager. Where compilation fails, one warning says why
            and the transforms run eager. Default False.
    """

    memory_mode: Union[str, MemoryMode] = MemoryMode.REVERSIBLE
    stream_dtype: Union[None, str, torch.dtype] = "auto"
    lean_recompute: bool = True
    plain_segments: int = 0
    plain_from: str = "output"
    reuse_buffers: bool = True
    compile_transforms: bool = False

    def __post_init__(self) -> None:
        try:
            mode = MemoryMode(self.memory_mode)
        except ValueError:
            raise ValueError(f"unknown memory_mode {self.memory_mode!r}; expected one of "
                             f"{[m.value for m in MemoryMode]} (for a setting in between, keep "
                             "memory_mode='reversible' and set plain_segments)") from None
        object.__setattr__(self, "memory_mode", mode)
        object.__setattr__(self, "stream_dtype", _stream_dtype(self.stream_dtype))
        if not isinstance(self.lean_recompute, bool):
            hint = {"neck": " ('neck' is True)", "none": " ('none' is False)",
                    "all": " ('all' was removed: it paid only with float64 streams)"}.get(str(self.lean_recompute), "")
            raise ValueError(f"lean_recompute must be True or False, got {self.lean_recompute!r}{hint}")
        if isinstance(self.plain_segments, bool) or not isinstance(self.plain_segments, int) or self.plain_segments < 0:
            raise ValueError(f"plain_segments must be an int >= 0 (how many segments keep their activations), "
                             f"got {self.plain_segments!r}")
        if self.plain_from not in PLAIN_FROM:
            raise ValueError(f"plain_from must be one of {PLAIN_FROM}, got {self.plain_from!r}")
        if not isinstance(self.reuse_buffers, bool):
            raise ValueError(f"reuse_buffers must be True or False, got {self.reuse_buffers!r}")
        if not isinstance(self.compile_transforms, bool):
            raise ValueError(f"compile_transforms must be True or False, got {self.compile_transforms!r}")

    def replace(self, **changes: Any) -> "RunPolicy":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def plain_mask(self, num_segments: int) -> list:
        """Which of ``num_segments`` segments train with ordinary autograd (True) under this policy."""
        if self.memory_mode is MemoryMode.PLAIN:
            return [True] * num_segments
        n = min(self.plain_segments, num_segments)
        if self.plain_from == "input":
            return [k < n for k in range(num_segments)]
        return [k >= num_segments - n for k in range(num_segments)]

    def resolve_stream_dtype(self, input_statistics: bool) -> Optional[torch.dtype]:
        """The stream dtype of one forward: ``'auto'`` is float64 iff a module normalises with
        statistics of its input (``input_statistics``), else None (the input's dtype)."""
        if self.stream_dtype == "auto":
            return torch.float64 if input_statistics else None
        return self.stream_dtype  # type: ignore[return-value]
