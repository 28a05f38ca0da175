"""Test-only: let ``torch.nn.SyncBatchNorm`` run on CPU tensors over a gloo process group.

torch's SyncBatchNorm runs its cross-process logic (one ``all_gather`` of the per-rank
mean/invstd/count in forward, one ``all_reduce`` of ``sum_dy``/``sum_dy_xmu`` in backward)
in Python (``torch/nn/modules/_functions.py``), but the five per-device kernels it calls
have no CPU implementation, and the module refuses CPU inputs. To test SyncBN under
multi-process DDP on a CPU-only machine, :func:`enable` installs float64-accumulating
CPU versions of those five kernels (written from their mathematical definition, see each
function) and lets the module (and DDP's constructor) accept CPU inputs. Everything else, in particular the
collectives and their order, is torch's own code.

Importing this module changes nothing; :func:`enable` (or importing
``cpu_sync_bn_enable``, e.g. through a config's ``custom_imports`` in every torchrun
worker) installs the patches for the rest of the process. Never use it in library code.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

_ORIG = {}
#: How often the forward statistics and backward reductions ran (tests check the sync path ran).
CALLS = {"batch_norm_stats": 0, "batch_norm_backward_reduce": 0}


def _reduce_dims(x: Tensor) -> Tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (x.dim() - 2))


def batch_norm_stats(input: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """Per-channel ``mean`` and ``invstd = 1 / sqrt(var_biased + eps)`` of ``input``."""
    CALLS["batch_norm_stats"] += 1
    x = input.double()
    dims = _reduce_dims(x)
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    return mean.to(input.dtype), (var + eps).rsqrt().to(input.dtype)


def batch_norm_gather_stats_with_counts(input: Tensor, mean_all: Tensor, invstd_all: Tensor,
                                        running_mean: Optional[Tensor], running_var: Optional[Tensor],
                                        momentum: float, eps: float, counts: Tensor
                                        ) -> Tuple[Tensor, Tensor]:
    """Global mean/invstd from per-rank (mean_i, invstd_i, n_i); updates the running stats.

    ``var_i = invstd_i^-2 - eps``, ``mean = sum n_i mean_i / N``,
    ``var = sum n_i (var_i + (mean_i - mean)^2) / N``; running stats move by ``momentum``
    towards ``mean`` and the unbiased ``var * N / (N - 1)``.
    """
    n = counts.double().view(-1, 1)
    m_i = mean_all.double()
    v_i = invstd_all.double().pow(-2) - eps
    total = n.sum()
    mean = (n * m_i).sum(0) / total
    var = (n * (v_i + (m_i - mean) ** 2)).sum(0) / total
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_((momentum * mean).to(running_mean.dtype))
        if running_var is not None:
            unbiased = var * total / (total - 1)
            running_var.mul_(1 - momentum).add_((momentum * unbiased).to(running_var.dtype))
    return mean.to(input.dtype), (var + eps).rsqrt().to(input.dtype)


def batch_norm_elemt(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                     mean: Tensor, invstd: Tensor, eps: float) -> Tensor:
    """``(x - mean) * invstd * weight + bias``."""
    y = (input - _bcast(mean, input)) * _bcast(invstd, input)
    if weight is not None:
        y = y * _bcast(weight, input)
    if bias is not None:
        y = y + _bcast(bias, input)
    return y


def batch_norm_backward_reduce(grad_out: Tensor, input: Tensor, mean: Tensor, invstd: Tensor,
                               weight: Optional[Tensor], input_g: bool, weight_g: bool,
                               bias_g: bool) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Local ``sum_dy``, ``sum_dy_xmu = sum dy (x - mean)``, ``grad_weight = sum_dy_xmu * invstd``, ``grad_bias = sum_dy``."""
    CALLS["batch_norm_backward_reduce"] += 1
    dims = _reduce_dims(input)
    dy = grad_out.double()
    sum_dy = dy.sum(dims)
    sum_dy_xmu = (dy * (input.double() - _bcast(mean.double(), input))).sum(dims)
    grad_weight = (sum_dy_xmu * invstd.double()).to(input.dtype) if weight_g else None
    grad_bias = sum_dy.to(input.dtype) if bias_g else None
    return sum_dy.to(input.dtype), sum_dy_xmu.to(input.dtype), grad_weight, grad_bias


def batch_norm_backward_elemt(grad_out: Tensor, input: Tensor, mean: Tensor, invstd: Tensor,
                              weight: Optional[Tensor], sum_dy: Tensor, sum_dy_xmu: Tensor,
                              count: Tensor) -> Tensor:
    """``dx = (dy - sum_dy/N - (x - mean) invstd^2 sum_dy_xmu/N) * invstd * weight``, N = sum(count)."""
    total = count.double().sum()
    inv = _bcast(invstd.double(), input)
    xmu = input.double() - _bcast(mean.double(), input)
    dx = (grad_out.double() - _bcast(sum_dy.double() / total, input)
          - xmu * inv * inv * _bcast(sum_dy_xmu.double() / total, input)) * inv
    if weight is not None:
        dx = dx * _bcast(weight.double(), input)
    return dx.to(grad_out.dtype)


def enable() -> None:
    """Install the CPU kernels on ``torch`` and let SyncBatchNorm accept CPU inputs (idempotent)."""
    if _ORIG:
        return
    for fn in (batch_norm_stats, batch_norm_gather_stats_with_counts, batch_norm_elemt,
               batch_norm_backward_reduce, batch_norm_backward_elemt):
        _ORIG[fn.__name__] = getattr(torch, fn.__name__)
        setattr(torch, fn.__name__, fn)
    # SyncBatchNorm.forward accepts input.device.type == the PrivateUse1 backend name; report
    # "cpu" as that name only while a SyncBatchNorm forward runs (torch.manual_seed and
    # others consult it too).
    orig_forward = _ORIG["SyncBatchNorm.forward"] = torch.nn.SyncBatchNorm.forward
    orig_name = torch._C._get_privateuse1_backend_name

    def forward(self: torch.nn.SyncBatchNorm, input: Tensor) -> Tensor:
        torch._C._get_privateuse1_backend_name = lambda: "cpu"
        try:
            return orig_forward(self, input)
        finally:
            torch._C._get_privateuse1_backend_name = orig_name

    torch.nn.SyncBatchNorm.forward = forward
    # DDP's constructor refuses SyncBatchNorm in CPU modules; that check is all it does.
    ddp = torch.nn.parallel.DistributedDataParallel
    _ORIG["DDP._passing_sync_batchnorm_handle"] = ddp._passing_sync_batchnorm_handle
    ddp._passing_sync_batchnorm_handle = lambda self, module: None

