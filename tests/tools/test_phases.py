"""``phases``: the phases of a detector step are timed where they happen."""
import time

import torch
from torch import nn

from phases import PHASES, time_phases


class _Slow(nn.Module):
    """``x * w``, with a forward and a backward that each take ``fwd_s`` / ``bwd_s`` seconds."""

    def __init__(self, fwd_s, bwd_s):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.fwd_s, self.bwd_s = fwd_s, bwd_s

    def forward(self, x):
        time.sleep(self.fwd_s)
        h = x * self.w
        h.register_hook(lambda g: time.sleep(self.bwd_s))  # runs inside this module's backward
        return (h * 2.0,)


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.neck, self.head = _Slow(0.02, 0.12), _Slow(0.04, 0.08), _Slow(0.06, 0.16)

    def loss(self, x):
        (y,) = self.head(self.neck(self.backbone(x)[0])[0])
        return {"loss": y.sum()}


def test_phases_are_attributed_to_their_modules():
    det = _Detector()
    x = torch.ones(2)
    r = time_phases(det, lambda: det.loss(x))
    assert set(r) == set(PHASES)
    # each module's sleeps land in its own forward and backward phase
    expect = dict(backbone_fwd=0.02, neck_fwd=0.04, heads_fwd=0.06, heads_bwd=0.16, neck_bwd=0.08,
                  backbone_bwd=0.12)
    for k, v in expect.items():
        assert v <= r[k] < v + 0.05, (k, r)
    assert abs(sum(r[k] for k in expect) - r["step"]) < 1e-6
