"""SyncBN under multi-process DDP through the reversible trunk (2 gloo ranks, CPU).

torch's ``SyncBatchNorm`` has no CPU kernels; ``tests/mm/cpu_sync_bn.py`` supplies CPU
versions of its five per-device kernels (checked against ``F.batch_norm`` below) while
the module, its autograd Function and its collectives (an ``all_gather`` in forward, an
``all_reduce`` in backward) stay torch's own. In the reversible backward every block's
forward is recomputed, SyncBN collectives included, interleaved with DDP's gradient
all-reduces on the same process group: this test proves that it neither hangs nor
updates the running statistics twice, and that it computes what one process computes
on the global batch with ordinary BN (plain autograd).
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("mmdet")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sync_bn_common import BACKBONE, loss_fn  # noqa: E402

pytestmark = [pytest.mark.mm]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD = 2


def test_cpu_sync_bn_kernels_equal_batch_norm():
    """The stand-in kernels, split over two 'ranks', equal F.batch_norm on the whole batch."""
    import cpu_sync_bn as k
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)

    xs, gs = x.detach().split([2, 4]), g.split([2, 4])
    stats = [k.batch_norm_stats(xi, 1e-5) for xi in xs]
    counts = torch.tensor([2 * 20.0, 4 * 20.0], dtype=torch.float64)
    rm2, rv2 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    mean, invstd = k.batch_norm_gather_stats_with_counts(
        xs[0], torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats]),
        rm2, rv2, 0.1, 1e-5, counts)
    y2 = torch.cat([k.batch_norm_elemt(xi, w.detach(), b.detach(), mean, invstd, 1e-5) for xi in xs])
    red = [k.batch_norm_backward_reduce(gi, xi, mean, invstd, w.detach(), True, True, True)
           for gi, xi in zip(gs, xs)]
    sum_dy, sum_dy_xmu = sum(r[0] for r in red), sum(r[1] for r in red)
    gx2 = torch.cat([k.batch_norm_backward_elemt(gi, xi, mean, invstd, w.detach(), sum_dy, sum_dy_xmu,
                                                 counts.int()) for gi, xi in zip(gs, xs)])
    for got, want in ((y2, y), (rm2, rm), (rv2, rv), (gx2, gx), (sum(r[2] for r in red), gw),
                      (sum(r[3] for r in red), gb)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sync_bn_ddp_equals_global_batch_bn(tmp_path, free_port):
    from mmengine.registry import MODELS

    import revbifpn_mm.mm  # noqa: F401

    torch.manual_seed(0)
    ref = MODELS.build(dict(BACKBONE, norm_cfg=dict(type="BN", eps=1e-3), memory_mode="plain"))
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    batches = [torch.randn(2 * WORLD, 3, 64, 64) for _ in range(2)]
    torch.save(init, tmp_path / "init.pt")
    torch.save(batches, tmp_path / "data.pt")

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_port", str(free_port), "tests/mm/sync_bn_worker.py",
           str(tmp_path / "init.pt"), str(tmp_path / "data.pt"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "mm"), ROOT, os.environ.get("PYTHONPATH", "")])}
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"SyncBN under DDP hung (no exit within 300 s): {err.stdout!s}{err.stderr!s}"[-3000:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    steps = len(batches)
    for r, res in enumerate(ranks):
        print(f"rank {r}: {res['num_bn']} SyncBN layers ({res['lean_bn']} in lean MBConv middles), "
              f"kernel calls {res['calls']}")
        # Every BN synchronised its statistics in the forward and once more in the recompute
        # (one extra forward per block), and its gradient reductions once per step. A BN in the
        # checkpointed middle of a lean MBConv (default: the 4 output MBConvs) runs twice more:
        # when the middle is re-run for its backward, and when its BN + act pair is.
        assert res["lean_bn"] > 0
        assert res["calls"] == {"batch_norm_stats": (2 * res["num_bn"] + 2 * res["lean_bn"]) * steps,
                                "batch_norm_backward_reduce": res["num_bn"] * steps}, res["calls"]
    # Reference: one process, the whole global batch, ordinary BN, plain autograd.
    ref.train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref_grads = None
    for batch in batches:
        opt.zero_grad()
        loss_fn(ref(batch)).backward()
        if ref_grads is None:
            ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
        opt.step()
    ref_state = ref.state_dict()

    gmax = max(g.abs().max().item() for g in ref_grads.values())
    worst = max((ranks[0]["grads"][n] - g).abs().max().item() for n, g in ref_grads.items()) / gmax
    print(f"SyncBN DDP vs global-batch BN, first-step gradients: max |diff| / max |g| = {worst:.2e}")
    assert worst <= 1e-4, f"SyncBN DDP gradients differ from global-batch BN: {worst:.2e}"

    tracked = [k for k in ref_state if k.endswith("num_batches_tracked")]
    assert tracked
    for r, res in enumerate(ranks):
        for k, v in ref_state.items():
            if k.endswith("num_batches_tracked"):
                assert res["state"][k].item() == steps, (
                    f"rank {r}: {k} = {res['state'][k].item()} after {steps} steps "
                    "(running statistics must be updated exactly once per step)")
            else:
                torch.testing.assert_close(res["state"][k], v, rtol=1e-4, atol=1e-5,
                                           msg=lambda m, k=k, r=r: f"rank {r}, {k}: {m}")
        for k, v in ranks[0]["state"].items():  # ranks agree exactly: same global statistics
            assert torch.equal(res["state"][k], v), f"ranks 0 and {r} disagree on {k}"
