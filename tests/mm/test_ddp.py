"""DDP (2 processes, gloo, CPU) through the real mmengine Runner and tools/dist_train.sh.

One SGD step (lr 1, no momentum/decay) of a Faster R-CNN with a reversible RevBiFPN-S0
backbone (BN frozen via norm_eval) on the generated dataset, launched with torchrun on 2
ranks (one image each), must move the backbone parameters exactly as one process that
accumulates the same two images (``accumulative_counts=2``): DDP averages the per-rank
gradients, which is what gradient accumulation computes. Sampling is made deterministic
(PseudoSamplers, no flip) so that both runs see identical losses.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("mmdet")
import torch  # noqa: E402

from curves import deterministic_faster_rcnn  # noqa: E402

pytestmark = [pytest.mark.mm, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CFG = """
train_cfg = dict(max_iters={iters}, val_interval=1000)
optim_wrapper = dict(_delete_=True, type='OptimWrapper', accumulative_counts={acc},
                     optimizer=dict(type='SGD', lr=1.0, momentum=0.0, weight_decay=0.0))
param_scheduler = []
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval={iters}),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
load_from = {init!r}
env_cfg = dict(dist_cfg=dict(backend='gloo'))
{extra}
"""


def _write_cfg(tmp_path, name, iters, acc, data, init, norm="BN", norm_eval=True, extra="", plain_segments=0,
               compile_transforms=False):
    path = tmp_path / f"{name}.py"
    backbone = (f"norm_eval={norm_eval}, drop_path_rate=0.0, norm_cfg=dict(type={norm!r}, eps=1e-3), "
                f"plain_segments={plain_segments}, compile_transforms={compile_transforms}")
    path.write_text(deterministic_faster_rcnn(data, backbone, batch_size=1)
                    + CFG.format(iters=iters, acc=acc, init=init, extra=extra))
    return str(path)


def _initial_checkpoint(tmp_path, cfg_path):
    """Both runs start from these weights (load_from), so the initial state is known exactly."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(cfg_path).model)
    model.init_weights()
    path = str(tmp_path / "init.pth")
    torch.save({"state_dict": model.state_dict()}, path)
    return path, {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}


def _backbone(ckpt):
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(6, 2, (128, 128), seed=3)


def _run(cmd, env=None):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.parametrize("plain_segments,compile_transforms", [(0, False), (3, False), (0, True)])
def test_ddp_gradients_equal_single_process(tmp_path, data, free_port, plain_segments, compile_transforms):
    """Fully reversible, at a memory budget setting (kept and reversible segments mixed), and with
    ``compile_transforms`` in the DDP ranks (``aot_eager``: ``tests/mm/compile_aot_eager.py``) against
    the eager single process."""
    probe = _write_cfg(tmp_path, "probe", iters=1, acc=1, data=data, init=None)
    init_path, init = _initial_checkpoint(tmp_path, probe)
    extra = ("custom_imports = dict(imports=['revbifpn_mm', 'compile_aot_eager'], allow_failed_imports=False)"
             if compile_transforms else "")
    ddp_cfg = _write_cfg(tmp_path, "ddp", iters=1, acc=1, data=data, init=init_path, plain_segments=plain_segments,
                         compile_transforms=compile_transforms, extra=extra)
    one_cfg = _write_cfg(tmp_path, "one", iters=2, acc=2, data=data, init=init_path)
    report = str(tmp_path / "compiled")
    _run(["bash", "tools/dist_train.sh", ddp_cfg, "2", "--work-dir", str(tmp_path / "ddp")],
         env={"PORT": str(free_port), "PYTHON": sys.executable, "COMPILE_REPORT": report,
              "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "mm"), ROOT])})
    if compile_transforms:  # the ranks really ran compiled
        for rank in (0, 1):
            with open(f"{report}.{rank}") as f:
                seen = json.load(f)
            assert seen["signatures"] > 0 and seen["failure"] is None, seen
    _run([sys.executable, "tools/train.py", one_cfg, "--work-dir", str(tmp_path / "one")])
    after_ddp = _backbone(str(tmp_path / "ddp" / "iter_1.pth"))
    after_one = _backbone(str(tmp_path / "one" / "iter_2.pth"))
    gmax = max((init[k] - after_one[k]).abs().max().item() for k in after_one if after_one[k].is_floating_point())
    assert gmax > 0, "the single-process run did not change the backbone"
    worst = 0.0
    for k, v in after_one.items():
        if not v.is_floating_point():
            continue
        g_ddp, g_one = init[k] - after_ddp[k], init[k] - v
        worst = max(worst, (g_ddp - g_one).abs().max().item() / gmax)
    print(f"DDP vs single-process backbone gradient: max rel diff {worst:.2e}")
    # float32 gradients summed in a different order (all-reduce vs accumulation)
    assert worst <= 1e-4, f"DDP vs single-process backbone gradient: max rel diff {worst:.2e}"


def test_sync_bn_trains_under_runner_ddp(tmp_path, data, free_port):
    """norm_cfg=dict(type='SyncBN'), BN training, 2 ranks through tools/dist_train.sh.

    torch's SyncBatchNorm has no CPU kernels; the config's ``custom_imports`` load the
    test-only CPU kernels (``tests/mm/cpu_sync_bn.py``; exactness is tested in
    ``test_sync_bn.py``) in every rank. Two iterations must finish (no hang: the
    recomputed forward issues SyncBN collectives while DDP reduces gradients) and leave
    every BN with ``num_batches_tracked == 2``: statistics updated once per step.
    """
    extra = "custom_imports = dict(imports=['revbifpn_mm', 'cpu_sync_bn_enable'], allow_failed_imports=False)"
    cfg = _write_cfg(tmp_path, "syncbn", iters=2, acc=1, data=data, init=None, norm="SyncBN",
                     norm_eval=False, extra=extra)
    tests_dir = os.path.join(ROOT, "tests", "mm")
    _run(["bash", "tools/dist_train.sh", cfg, "2", "--work-dir", str(tmp_path / "syncbn")],
               env={"PORT": str(free_port), "PYTHONPATH": os.pathsep.join([tests_dir, ROOT]),
                    "PYTHON": sys.executable})
    sd = torch.load(str(tmp_path / "syncbn" / "iter_2.pth"), map_location="cpu", weights_only=False)["state_dict"]
    tracked = {k: int(v) for k, v in sd.items() if k.startswith("backbone.") and k.endswith("num_batches_tracked")}
    assert len(tracked) > 200, len(tracked)
    assert set(tracked.values()) == {2}, f"BN updates per layer after 2 steps: {sorted(set(tracked.values()))}"
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def test_sync_bn_on_cpu_distributed_is_a_clear_error():
    """Without CPU kernels, a distributed CPU launch with SyncBN stops before building anything."""
    from mmengine.config import Config

    from cpu_dist import cpu_sync_bn_available, prepare_cpu_distributed
    if torch.cuda.is_available() or cpu_sync_bn_available():
        pytest.skip("this torch runs SyncBN here")
    cfg = Config(dict(model=dict(type="FasterRCNN", backbone=dict(type="RevBiFPN", norm_cfg=dict(type="SyncBN")))))
    with pytest.raises(ValueError, match="SyncBN.*needs GPUs.*type='BN'"):
        prepare_cpu_distributed(cfg, "pytorch")
    with pytest.raises(ValueError, match="SyncBN"):
        prepare_cpu_distributed(Config(dict(model=dict(type="X"), sync_bn="torch")), "slurm")
    assert prepare_cpu_distributed(Config(dict(model=dict(type="X", norm_cfg=dict(type="BN")))), "slurm")


def test_destroying_the_group_joins_glooes_threads_only_once_nothing_holds_it(tmp_path, free_port):
    """The cause of the abort at exit (pytorch/pytorch#190489): gloo's worker threads outlive
    destroy_process_group while a DDP wrapper still holds the group, and then destroy their finished
    work (with Python-owned tensors) while the interpreter finalizes. tools/train.py drops its runner
    before shutdown_distributed, which then leaves no gloo thread behind."""
    code = f"""
import torch, torch.distributed as dist
import revbifpn_mm  # tools/train.py's first import (it brings torch.distributed.fsdp, without which gloo's
# threads outlive destroy_process_group here, torch 2.13 CPU; it came through preflight before)
from cpu_dist import native_threads, shutdown_distributed
dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{free_port}', rank=0, world_size=1)
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
ddp(torch.randn(3, 2)).sum().backward()
before = native_threads('pt_gloo')
held = shutdown_distributed()
dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{free_port + 1}', rank=0, world_size=1)
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
ddp(torch.randn(3, 2)).sum().backward()
del ddp
print(before, held, shutdown_distributed())
"""
    tools = os.path.join(ROOT, "tools")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([tools, ROOT])})
    assert out.returncode == 0, out.stderr[-3000:]
    before, held, dropped = map(int, out.stdout.split()[-3:])
    assert before > 0 and held == before and dropped == 0, out.stdout
    train = open(os.path.join(tools, "train.py")).read()
    assert train.index("del runner") < train.index("shutdown_distributed(barrier=done)")
