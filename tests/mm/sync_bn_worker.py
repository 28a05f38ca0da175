"""torchrun worker of ``test_sync_bn.py``: two SGD steps of a SyncBN RevBiFPN under DDP.

Usage: ``torchrun --nproc_per_node W tests/mm/sync_bn_worker.py INIT.pt DATA.pt OUT_DIR``
(with ``tests/mm`` on PYTHONPATH). Each rank takes its contiguous slice of every global
batch in DATA.pt, runs the reversible backbone (BN in training mode, synchronised), and
saves the DDP-averaged gradients of the first step plus its final state dict.
"""
import sys

import torch
import torch.distributed as dist

import cpu_sync_bn  # (SyncBatchNorm on CPU tensors, test-only)
import cpu_sync_bn_enable  # noqa: F401
from mmengine.registry import MODELS

import revbifpn_mm.mm  # noqa: F401  (registers RevBiFPN)
from revbifpn_mm.models import MBConv
from sync_bn_common import BACKBONE, loss_fn


def main(init_path: str, data_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = MODELS.build(dict(BACKBONE, norm_cfg=dict(type="SyncBN", eps=1e-3)))
    num_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert num_bn > 0
    # BNs inside the checkpointed middle of the lean output MBConvs (lean_recompute=True, the default)
    assert model.policy.lean_recompute
    lean_bn = sum(isinstance(b, torch.nn.SyncBatchNorm)
                  for m in model.rev_stack.tail.modules() if isinstance(m, MBConv)
                  for conv in (m.exp_conv, m.dw_conv) for b in conv.modules())
    model.load_state_dict(torch.load(init_path))
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = None
    for batch in torch.load(data_path):
        local = batch.chunk(world)[rank]
        opt.zero_grad()
        loss_fn(ddp(local)).backward()
        if grads is None:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
    torch.save({"grads": grads, "state": model.state_dict(), "num_bn": num_bn, "lean_bn": lean_bn,
                "calls": dict(cpu_sync_bn.CALLS)}, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
