"""Dispatched aten kernels per training step: what the reversible backward costs in launches.

On a GPU in the launch-bound regime (small models, small batches) the step time follows
the number of dispatched kernels. One recomputation of every transform sets a floor of
``(forward + forward + plain backward) / (forward + plain backward)``, about 1.44x for
S0/S3 with frozen BN; the reversible step must stay close to it (at most 1.47x, the
speed issue's target) with the detection default (frozen BN, ``lean_recompute='neck'``).
The count is device-independent, so this is not a timed test. It counts the policy a GPU
runs: frozen BN is not folded into the convolutions (``fold_frozen_bn=False``; the CPU
default folds it, which about doubles the tiny kernels per step for fewer passes over maps).
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from revbifpn_mm.models import RevBiFPN

#: Ops that allocate nothing and launch no kernel (views, metadata), not counted.
_NOT_KERNELS = {
    "detach", "slice", "view", "_unsafe_view", "as_strided", "t", "expand", "unsqueeze", "squeeze",
    "select", "split", "split_with_sizes", "alias", "empty", "empty_like", "permute", "transpose",
    "reshape", "chunk", "narrow", "unbind", "empty_strided", "lift_fresh", "_reshape_alias",
    "new_empty", "new_empty_strided",
}


class _KernelCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket).split(".")[-1]
        if name not in _NOT_KERNELS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _count(arch: str, mode: str, frozen_bn: bool, fold: bool = False):
    torch.manual_seed(0)
    model = RevBiFPN(arch, num_classes=0, fold_frozen_bn=fold)
    model.set_memory_mode(mode)
    model.train()
    if frozen_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    x = torch.randn(2, 3, 128, 128)
    sum(o.float().sum() for o in model(x)).backward()  # warm-up (lazy init, caches)
    model.zero_grad(set_to_none=True)
    with _KernelCounter() as fwd:
        loss = sum(o.float().sum() for o in model(x))
    with _KernelCounter() as bwd:
        loss.backward()
    return fwd.ops, bwd.ops


@pytest.mark.parametrize("arch", ["s0", "s3"])
def test_reversible_step_stays_near_one_recompute(arch):
    pf, pb = _count(arch, "plain", frozen_bn=True)
    rf, rb = _count(arch, "reversible", frozen_bn=True)
    plain, rev = sum(pf.values()) + sum(pb.values()), sum(rf.values()) + sum(rb.values())
    floor = (2 * sum(pf.values()) + sum(pb.values())) / plain  # forward + recompute + backward
    ratio = rev / plain
    assert ratio <= 1.47, (arch, ratio, floor, (rb - pb - pf).most_common(8))
    assert ratio >= floor - 0.02, (arch, ratio, floor)  # sanity: the recompute is really counted
    # no dtype-promotion queries through the dispatcher on the hot path
    assert rb["promote_types"] == 0, rb["promote_types"]
