"""tools/train.py --auto-batch (tools/auto_batch.py): the largest fully reversible batch for a card, the
learning rate scaled as --auto-scale-lr, a clear refusal when batch 1 does not fit, and the plan cached
per config, card and version (a restart does not measure again).

The measurement itself is the planner's (tests/tools/test_planner.py); here make_plan is replaced by a
stand-in with known working sets, counting its calls."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("mmdet")

import auto_batch  # noqa: E402
import planner  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QS = str(ROOT / "configs" / "quickstart" / "mask_rcnn_revbifpn_s0_synthetic.py")
GIB = 1 << 30
pytestmark = pytest.mark.mm


def _probe(batch, fb):
    third = GIB // 3
    return planner.Probe(mode="reversible", batch=batch, shape=(256, 256), device="cpu", amp=False, optimizer="SGD",
                         params_bytes=third, buffers_bytes=GIB - 3 * third, grads_bytes=third, optim_bytes=third,
                         fwd_bwd_bytes=fb, optim_step_bytes=0, step_s=0.0)


@pytest.fixture
def fake_plan(monkeypatch, tmp_path):
    """make_plan stand-in: 1 GiB fixed, 1 GiB per sample; the cache in a fresh directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []

    def make_plan(config, **kw):
        calls.append(kw)
        rev = planner.ModePlan("reversible", [_probe(1, GIB), _probe(2, 2 * GIB)])
        return planner.Plan(config=config, scope="mmdet", shape=(256, 256), shape_source="test", amp=False,
                            device="cpu", batch=4, auto_scale_lr=True, modes=[rev],
                            instances=kw.get("instances", 0), instances_source=kw.get("instances_source", ""))
    monkeypatch.setattr(planner, "make_plan", make_plan)
    return calls


def _args(card, instances=None):
    return SimpleNamespace(config=QS, auto_batch=card, cfg_options=None, instances=instances)


def test_largest_fitting_batch_scaled_lr_and_cache_hit(fake_plan):
    logs = []
    cfg = planner.load_config(QS)
    assert cfg.train_dataloader.batch_size == 4 and not cfg.auto_scale_lr.enable
    choice = auto_batch.apply_auto_batch(_args("24", instances=50), cfg, log=logs.append)
    # on_gpu(b) = (1 GiB fixed + b GiB) * 1.1 + 1 GiB <= 24 GiB  <=>  b <= 19.9
    assert choice.batch == 19 and cfg.train_dataloader.batch_size == 19
    assert cfg.auto_scale_lr.enable is True  # mmengine scales the lr by (GPUs x 19) / base_batch_size
    assert len(fake_plan) == 1 and fake_plan[0]["instances"] == 50 and fake_plan[0]["modes"] == ("reversible",)
    line = logs[-1]
    assert "batch 19 per GPU (config: 4)" in line and "batch 20 would need 24.100 GiB" in line, line
    assert "50 instances per image (--instances)" in line and "auto_scale_lr" in line, line
    # a restart: the same config, card and version read the cached plan, nothing is measured
    cfg2 = planner.load_config(QS)
    again = auto_batch.apply_auto_batch(_args("24", instances=50), cfg2, log=logs.append)
    assert again.cached and again.batch == 19 and cfg2.train_dataloader.batch_size == 19
    assert len(fake_plan) == 1 and "read from the cache" in logs[-1]
    # another card, or another model, is another plan
    auto_batch.apply_auto_batch(_args("12", instances=50), planner.load_config(QS), log=logs.append)
    cfg3 = planner.load_config(QS, {"model.backbone.arch": "s1"})
    auto_batch.apply_auto_batch(_args("24", instances=50), cfg3, log=logs.append)
    assert len(fake_plan) == 3
    # the work dir or resume settings are not part of the key
    cfg4 = planner.load_config(QS)
    cfg4.work_dir, cfg4.resume = "/elsewhere", True
    assert auto_batch.plan_key(cfg4, 24 * GIB, 50) == auto_batch.plan_key(planner.load_config(QS), 24 * GIB, 50)


def test_refuses_when_batch_1_does_not_fit(fake_plan):
    cfg = planner.load_config(QS)
    with pytest.raises(auto_batch.AutoBatchError) as err:
        auto_batch.apply_auto_batch(_args("3", instances=5), cfg)  # batch 1 needs (1 + 1) * 1.1 + 1 = 3.2 GiB
    text = str(err.value)
    assert "even batch 1 does not fit a 3 GiB card" in text and "3.20 GiB" in text, text
    assert "plain_segments" in text and "smaller input" in text, text
    assert cfg.train_dataloader.batch_size == 4  # unchanged


def test_card_size_argument():
    assert auto_batch.card_bytes("12") == 12 * GIB
    with pytest.raises(auto_batch.AutoBatchError, match="GiB"):
        auto_batch.card_bytes("twelve")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(auto_batch.AutoBatchError, match="no CUDA device"):
            auto_batch.card_bytes("auto")


def test_train_cli_refuses_in_one_line(tmp_path):
    """The real planner, end to end through tools/train.py: a 1 GiB card cannot hold batch 1 (the
    allowance alone is 1 GiB), so the job stops before training with one clear line."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), QS, "--auto-batch", "1", "--instances",
                           "4", "--work-dir", str(tmp_path / "w"), "--cfg-options",
                           f"train_dataloader.dataset.data_root={tmp_path / 'synthetic_coco'}/"],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "even batch 1 does not fit a 1 GiB card" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


RANKS_SCRIPT = r'''
import os, sys, json
sys.path.insert(0, sys.argv[3])
import torch.distributed as dist
import auto_batch
rank = int(os.environ["RANK"])
dist.init_process_group("gloo")  # tools/cpu_dist.py starts it so on CPU before the auto-batch
cfg = dict(launcher="pytorch")
got = auto_batch._rank0_choice(cfg, lambda: f"measured by rank {rank}")
try:
    auto_batch._rank0_choice(cfg, lambda: (_ for _ in ()).throw(auto_batch.AutoBatchError(f"no fit on rank {rank}")))
    err = None
except auto_batch.AutoBatchError as e:
    err = str(e)
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(dict(got=got, err=err), f)
dist.destroy_process_group()
'''


def test_every_rank_gets_rank_0s_choice(tmp_path, free_port):
    """Two gloo ranks: rank 0 decides (plans), the other receives the same batch or the same refusal."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port), PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), "x", str(ROOT / "tools")],
                                      env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-2000:]
    import json
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res == dict(got="measured by rank 0", err="no fit on rank 0"), res
