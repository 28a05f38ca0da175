"""The planner's prediction model: measurements (:class:`Probe`) in, memory at any batch and setting out.

Pure arithmetic, no torch: :class:`ModePlan` extrapolates one setting's measurements at batch 1
and 2 linearly in the batch, :class:`Plan` adds the ``plain_segments`` settings::

    allocated(k, b) = fixed + max(fb(1) + (b - 1) * (fb(2) - fb(1)) + b * kept(k), opt)
    on_gpu(k, b)    = allocated(k, b) * (1 + FRAGMENTATION) + CONTEXT_GIB

Memory is in GiB (2^30 bytes), as ``nvidia-smi`` and card specs count it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ["GIB", "BATCHES", "CONTEXT_GIB", "FRAGMENTATION", "ALLOWANCE_TEXT", "Probe", "ModePlan", "Plan"]

GIB = float(1 << 30)
BATCHES: Tuple[int, ...] = (1, 2, 4, 8)
CONTEXT_GIB = 1.0
"""GPU memory of the CUDA context and cuDNN/cuBLAS workspaces, outside the caching allocator (an assumption)."""
FRAGMENTATION = 0.10
"""Fraction of the allocated peak the caching allocator reserves beyond it (an assumption; see docs/planner.md)."""
ALLOWANCE_TEXT = ("CUDA context + caching-allocator fragmentation: {ctx:.1f} GiB + {frag:.0%} of the "
                  "allocated peak (an assumption, not measured here)")


@dataclass
class Probe:
    """What one training-step measurement found (bytes)."""

    mode: str  # 'reversible', 'plain' or 'plain_segments=k'
    batch: int
    shape: Tuple[int, int]
    device: str
    amp: bool
    optimizer: str
    params_bytes: int
    buffers_bytes: int
    grads_bytes: int
    optim_bytes: int
    fwd_bwd_bytes: int
    optim_step_bytes: int
    step_s: float
    reserved_bytes: Optional[int] = None
    plain_segments: Dict[str, Dict[str, float]] = field(default_factory=dict)
    """With ``sweep``: per setting (``'0'`` ... ``'n'``) the bytes a forward saves (``saved``) and ``step_s``."""
    plain_segments_note: Optional[str] = None
    """The ``plain_segments`` settings that could not be measured, and why."""
    instances: int = 0
    """Ground-truth instances per image of the measured batch (the most of any image)."""
    assign_peak_bytes: Optional[int] = None
    """Detectors with a ``MaxIoUAssigner``: the forward + backward peak while the anchors are assigned."""
    outside_assign_bytes: Optional[int] = None
    """The forward + backward peak outside the assignment (the step's peak with the assignment on the CPU)."""

    @property
    def fixed_bytes(self) -> int:
        """Parameters, buffers, gradients and optimizer state."""
        return self.params_bytes + self.buffers_bytes + self.grads_bytes + self.optim_bytes

    @property
    def peak_bytes(self) -> int:
        """Peak of the whole training step: fixed costs plus the larger phase working set."""
        return self.fixed_bytes + max(self.fwd_bwd_bytes, self.optim_step_bytes)


@dataclass
class ModePlan:
    """Measurements of one setting at batch 1 and 2, and the predictions made from them."""

    mode: str
    probes: List[Probe] = field(default_factory=list)
    skipped: Optional[str] = None

    @property
    def measured(self) -> bool:
        """Whether both measurements were taken."""
        return len(self.probes) == 2 and self.skipped is None

    @property
    def fixed_bytes(self) -> int:
        """Parameters, buffers, gradients and optimizer state."""
        return self.probes[0].fixed_bytes

    @property
    def per_sample_bytes(self) -> int:
        """Activation memory per sample: forward + backward working set at batch 2 minus at batch 1."""
        return self.probes[1].fwd_bwd_bytes - self.probes[0].fwd_bwd_bytes

    @property
    def step_constant_bytes(self) -> int:
        """Batch-independent part of the forward + backward working set."""
        return self.probes[0].fwd_bwd_bytes - self.per_sample_bytes

    @property
    def optim_step_bytes(self) -> int:
        """Working set of the optimizer step (the larger of the two runs)."""
        return max(p.optim_step_bytes for p in self.probes)

    def _line(self, attr: str, batch: int) -> float:
        first, second = (getattr(p, attr) for p in self.probes)
        return first + (batch - 1) * (second - first)

    def fwd_bwd(self, batch: int, assign_on_cpu: bool = False) -> float:
        """Predicted forward + backward working set at ``batch``, bytes. Where the probes split it at
        the assignment, the larger of the two lines (the peak may move out of the assignment as the
        batch grows); ``assign_on_cpu``: the line outside the assignment alone (``gpu_assign_thr``)."""
        if self.probes[0].outside_assign_bytes is None or self.probes[1].outside_assign_bytes is None:
            return self._line("fwd_bwd_bytes", batch)
        outside = self._line("outside_assign_bytes", batch)
        return outside if assign_on_cpu else max(outside, self._line("assign_peak_bytes", batch))

    def allocated(self, batch: int, kept: float = 0.0, assign_on_cpu: bool = False) -> float:
        """Predicted peak of allocated memory at ``batch`` with ``kept`` more bytes per sample, bytes."""
        fb = self.fwd_bwd(batch, assign_on_cpu) + batch * kept
        return self.fixed_bytes + max(fb, self.optim_step_bytes)

    def on_gpu(self, batch: int, kept: float = 0.0, context_gib: float = CONTEXT_GIB,
               fragmentation: float = FRAGMENTATION, assign_on_cpu: bool = False) -> float:
        """Predicted GPU memory at ``batch`` with the context/allocator allowance, bytes."""
        return self.allocated(batch, kept, assign_on_cpu) * (1 + fragmentation) + context_gib * GIB

    def largest_batch(self, gpu_bytes: float, kept: float = 0.0, context_gib: float = CONTEXT_GIB,
                      fragmentation: float = FRAGMENTATION, cap: int = 4096, assign_on_cpu: bool = False) -> int:
        """Largest batch whose prediction fits in ``gpu_bytes`` (0: not even batch 1; ``cap`` at most)."""
        lo, hi = 0, cap + 1  # the prediction grows with the batch: bisect, batch lo fits (0 trivially), hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            fits = self.on_gpu(mid, kept, context_gib, fragmentation, assign_on_cpu) <= gpu_bytes
            lo, hi = (mid, hi) if fits else (lo, mid)
        return lo


@dataclass
class Plan:
    """A memory plan of one config: the reversible measurements, the ``plain_segments`` settings, plain mode."""

    config: str
    scope: str
    shape: Tuple[int, int]
    shape_source: str
    amp: bool
    device: str
    batch: int
    """The config's own batch per device (``train_dataloader.batch_size``)."""
    auto_scale_lr: bool
    """Whether the config supports ``--auto-scale-lr``."""
    modes: List[ModePlan]
    not_measured: List[str] = field(default_factory=list)
    instances: int = 0
    """Detectors: ground-truth instances per image measured with (the dataset's most, or assumed)."""
    instances_source: str = ""
    one_instance: Optional[Probe] = None
    """Detectors: the fully reversible batch-1 step with one instance per image."""
    gpu_assign_thr: float = -1
    """The config's ``train_cfg.rpn.assigner.gpu_assign_thr`` (-1: assignment on the GPU)."""

    @property
    def gt_bytes(self) -> Optional[float]:
        """Ground truth + assignment at batch 1: the working set with :attr:`instances` per image minus
        the one with a single instance (None where not measured)."""
        rev = self.reversible
        if rev is None or self.one_instance is None:
            return None
        return rev.probes[0].fwd_bwd_bytes - self.one_instance.fwd_bwd_bytes

    @property
    def assign_on_cpu(self) -> bool:
        """Whether the config already sends this many boxes' assignment to the CPU."""
        return 0 < self.gpu_assign_thr < self.instances

    def suggested_assign_thr(self) -> Optional[int]:
        """The most ground-truth boxes whose assignment stays below the rest of the batch-1 step (the
        assignment's peak is linear in the boxes between the 1- and the N-instance steps); None where the
        assignment does not set the peak or was not measured."""
        rev, one = self.reversible, self.one_instance
        if rev is None or one is None or one.assign_peak_bytes is None or rev.probes[0].assign_peak_bytes is None:
            return None
        top, outside = rev.probes[0].assign_peak_bytes, rev.probes[0].outside_assign_bytes
        if top <= outside or self.instances <= 1:
            return None
        per_box = (top - one.assign_peak_bytes) / (self.instances - 1)
        return max(1, int(1 + (outside - one.assign_peak_bytes) // per_box)) if per_box > 0 else None

    @property
    def reversible(self) -> Optional[ModePlan]:
        """The fully reversible measurements (all predictions start from them), if taken."""
        return next((m for m in self.modes if m.mode == "reversible" and m.measured), None)

    @property
    def plain_segments(self) -> Dict[int, Dict[str, float]]:
        """``plain_segments`` setting -> ``kept`` (activation bytes per sample beyond the reversible
        step) and ``step_s`` (seconds of a batch-1 step on the measuring device)."""
        raw = self.reversible.probes[0].plain_segments if self.reversible else {}
        if not raw:
            return {}
        base = raw["0"]["saved"]
        return {int(k): dict(kept=max(0.0, v["saved"] - base), step_s=v["step_s"]) for k, v in raw.items()}

    def best_plain_segments(self, gpu_bytes: float, batch: int, context_gib: float = CONTEXT_GIB,
                            fragmentation: float = FRAGMENTATION) -> Optional[int]:
        """The setting that keeps the most activations and still fits ``batch`` in ``gpu_bytes``, or the
        fastest fitting one where keeping more did not measure faster; None if none fits."""
        rev = self.reversible
        fits = [k for k, s in sorted(self.plain_segments.items())
                if rev.on_gpu(batch, s["kept"], context_gib, fragmentation, self.assign_on_cpu) <= gpu_bytes]
        if not fits:
            return None
        return min(fits, key=lambda k: (self.plain_segments[k]["step_s"], -k)) if not self.time_falls else max(fits)

    @property
    def time_falls(self) -> bool:
        """Whether the measured step time falls (within 5 %) as each further setting keeps more."""
        times = [s["step_s"] for _, s in sorted(self.plain_segments.items())]
        return all(b <= a * 1.05 for a, b in zip(times, times[1:]))

