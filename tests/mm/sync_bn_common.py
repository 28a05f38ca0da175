"""Model and loss shared by ``tests/mm/test_sync_bn.py`` and its torchrun worker."""
from typing import Sequence

from torch import Tensor

# S0 detection backbone, BN in training mode (SyncBN's use), no stochastic depth.
BACKBONE = dict(type="RevBiFPN", arch="s0", norm_eval=False, drop_path_rate=0.0)


def loss_fn(outs: Sequence[Tensor]) -> Tensor:
    """Mean over the (local) batch, so DDP's gradient average is the global-batch mean."""
    return sum((o.float() * o.float().roll(1, dims=1)).mean() + o.float().pow(2).mean() for o in outs)
