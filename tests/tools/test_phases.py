"""``phases``: each phase of a detector step is timed where it happens, read from torch.profiler.

Load-independent: one phase sleeps a whole second and the others not at all; machine load can only
lengthen times, so the test needs only that the sleeping phase holds at least its second and that
none of the others (a few tiny ops) reaches one.
"""
import time

import pytest
import torch
from torch import nn

from phases import PHASES, time_phases

SLEEP = 1.0


class _Part(nn.Module):
    """``x * w``, whose forward or backward sleeps ``SLEEP`` seconds when told to."""

    def __init__(self, fwd=False, bwd=False):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.fwd, self.bwd = fwd, bwd

    def forward(self, x):
        if self.fwd:
            time.sleep(SLEEP)
        h = x * self.w
        if self.bwd:
            h.register_hook(lambda g: time.sleep(SLEEP))  # runs inside this module's backward
        return (h * 2.0,)


class _Detector(nn.Module):
    def __init__(self, phase):
        super().__init__()
        self.backbone, self.neck, self.head = (_Part(phase == f"{p}_fwd", phase == f"{p}_bwd")
                                               for p in ("backbone", "neck", "heads"))

    def loss(self, x):
        (y,) = self.head(self.neck(self.backbone(x)[0])[0])
        return {"loss": y.sum()}


@pytest.mark.parametrize("phase", [p for p in PHASES if p != "step"])
def test_a_phase_gets_its_own_time(phase):
    det = _Detector(phase)
    x = torch.ones(2)
    r = time_phases(det, lambda: det.loss(x))
    assert set(r) == set(PHASES)
    assert r[phase] >= SLEEP, (phase, r)
    assert all(r[k] < SLEEP for k in PHASES if k not in (phase, "step")), (phase, r)
    assert abs(sum(r[k] for k in PHASES if k != "step") - r["step"]) < 1e-6
