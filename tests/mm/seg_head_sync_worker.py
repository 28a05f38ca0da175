"""torchrun worker of ``test_seg_head.py``: one DDP step of a SyncBN ``LeanFCNHead`` on CPU.

Usage: ``torchrun --nproc_per_node W tests/mm/seg_head_sync_worker.py IN.pt OUT_DIR`` (with
``tests/mm`` on PYTHONPATH). Each rank takes its contiguous slice (``sizes`` in IN.pt) of the global
batch and of the output gradient, and saves its output, input gradients, DDP-averaged parameter gradients,
state dict, and how often torch's SyncBN kernels ran.
"""
import sys

import torch
import torch.distributed as dist

import cpu_sync_bn  # (counts torch's SyncBN kernel calls; test-only)
import cpu_sync_bn_enable  # noqa: F401  (also lets DDP's constructor accept a CPU SyncBN module)
from revbifpn_mm.mm.decode_head import LeanFCNHead


def main(in_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.load(in_path)
    cfg = dict(data["cfg"], norm_cfg=dict(type="SyncBN", requires_grad=True))
    head = LeanFCNHead(**cfg).double()
    assert isinstance(head.convs[0].bn, torch.nn.SyncBatchNorm)
    head.load_state_dict(data["state"])
    head.train()
    ddp = torch.nn.parallel.DistributedDataParallel(head, broadcast_buffers=False)
    sizes = data["sizes"]  # images per rank: unequal, so the statistics must weigh the ranks by count
    assert len(sizes) == world
    local = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    feats = [f[local].clone().requires_grad_() for f in data["feats"]]
    g = data["g"][local]
    out = ddp(feats)
    (out * g).sum().backward()
    torch.save({"out": out.detach(), "input_grads": [f.grad for f in feats],
                "grads": {n: p.grad.clone() for n, p in head.named_parameters()},
                "state": head.state_dict(), "calls": dict(cpu_sync_bn.CALLS)}, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
