"""The run policy: how a :class:`~revbifpn_mm.core.RevSequential` trains (memory for time; never the
function computed or its gradients beyond float round-off)."""
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
    ``compile_transforms``; the other fields are for experiments and tests (``set_policy`` on a built model).

    Attributes:
        memory_mode: ``'reversible'`` (default): only the trunk outputs are kept for the backward, which
            reconstructs every other activation from them (activation memory independent of depth).
            ``'plain'``: ordinary autograd for the whole container, e.g. for double backward
            (``create_graph=True``), which the reversible path refuses.
        stream_dtype: dtype of the residual streams between reversible ops. ``'auto'`` (default): float64
            while a module of the container normalises with statistics of its current input (a BatchNorm in
            training mode; GroupNorm, InstanceNorm, LayerNorm always), which would amplify the float32
            reconstruction error in the gradients; the input's dtype otherwise (frozen BN, the detection
            setting: half the stored bytes). ``'float64'``, ``'float32'`` (or the torch dtype), or ``None``
            (the input's dtype). Transforms always compute in their parameters' dtype.
        lean_recompute: While the backward recomputes the non-invertible tail (whose full-resolution
            recomputation sets the backward's peak), run each transform's ``lean_forward`` where it has one:
            a smaller working set for one more evaluation of cheap elementwise layers. Gradients are
            bitwise the same. Default True.
        plain_segments: How many of the container's segments (each one autograd Function in a reversible
            call; the recomputed tail counts as one more, the last) train with ordinary autograd, keeping
            their activations, counted from ``plain_from``. ``0`` (default) is fully reversible; all of them
            (or more) is ``memory_mode='plain'``. A card with memory to spare buys back the recomputation
            (the planner measures the setting per config).
        plain_from: ``'output'`` (default: the tail and the last segments, whose recomputation costs the
            most time per byte kept) or ``'input'``.
        reuse_buffers: Let the backward update the stream tensors it allocated itself in place and reuse the
            stored outputs as its first working buffers. ``False`` runs the same algorithm out of place
            (tests, debugging). Default True.
        compile_transforms: Run each transform of the reversible call (in the forward and in the backward's
            recomputation) through ``torch.compile`` (:mod:`revbifpn_mm.core.compiled`); the container stays
            eager. Fewer, fused kernels per step, for a first step that compiles (minutes on a CPU);
            gradients and BN statistics equal the eager ones to float32 round-off. Transforms that draw
            random numbers, the recomputed tail's ``lean_forward``, plain segments and
            ``memory_mode='plain'`` run eager. Where compilation fails, one warning says why and the
            transforms run eager. Default False.
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
        hints = {"neck": " ('neck' is True)", "none": " ('none' is False)",
                 "all": " ('all' was removed: it paid only with float64 streams)"}
        for name in ("lean_recompute", "reuse_buffers", "compile_transforms"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                hint = hints.get(str(value), "") if name == "lean_recompute" else ""
                raise ValueError(f"{name} must be True or False, got {value!r}{hint}")
        if isinstance(self.plain_segments, bool) or not isinstance(self.plain_segments, int) or self.plain_segments < 0:
            raise ValueError(f"plain_segments must be an int >= 0 (how many segments keep their activations), "
                             f"got {self.plain_segments!r}")
        if self.plain_from not in PLAIN_FROM:
            raise ValueError(f"plain_from must be one of {PLAIN_FROM}, got {self.plain_from!r}")

    def replace(self, **changes: Any) -> "RunPolicy":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def plain_mask(self, num_segments: int) -> list:
        """Which of ``num_segments`` segments train with ordinary autograd (True) under this policy."""
        n = num_segments if self.memory_mode is MemoryMode.PLAIN else min(self.plain_segments, num_segments)
        start = 0 if self.plain_from == "input" else num_segments - n
        return [start <= k < start + n for k in range(num_segments)]

    def resolve_stream_dtype(self, input_statistics: bool) -> Optional[torch.dtype]:
        """The stream dtype of one forward: ``'auto'`` is float64 iff a module normalises with
        statistics of its input (``input_statistics``), else None (the input's dtype)."""
        if self.stream_dtype == "auto":
            return torch.float64 if input_statistics else None
        return self.stream_dtype  # type: ignore[return-value]
