"""Faults a preempted or crashed job meets: a save cut short, a corrupt latest checkpoint, a killed rank.

Each trains the quickstart Faster R-CNN (RevBiFPN-S0) on a tiny generated dataset through
tools/train.py or tools/dist_train.sh, iteration-based, with a checkpoint every 2 iterations.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mmdet")

pytestmark = [pytest.mark.mm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "tools" / "train.py")
QS_DET = str(ROOT / "configs" / "quickstart" / "faster_rcnn_revbifpn_s0_synthetic.py")

# Kills the process inside its N-th checkpoint write (KILL_AT_SAVE), after half the bytes: mmengine
# serialises a checkpoint to memory and writes it through its local file backend.
KILLER = """
import os, signal
from mmengine.fileio.backends import local_backend
_put, _n = local_backend.LocalBackend.put, [0]
def put(self, obj, filepath):
    if str(filepath).endswith('.pth') or '.pth.tmp-' in str(filepath):
        _n[0] += 1
        if _n[0] == int(os.environ.get('KILL_AT_SAVE', '0')):
            with open(filepath, 'wb') as f:
                f.write(obj[: len(obj) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    return _put(self, obj, filepath)
local_backend.LocalBackend.put = put
"""


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(8, 2, (96, 96), seed=11)


def _options(root, iters, keep=1, hook="SafeCheckpointHook"):
    opts = {f"{k}_dataloader.dataset.data_root": root for k in ("train", "val", "test")}
    opts.update({"val_evaluator.ann_file": root + "annotations/instances_val.json",
                 "test_evaluator.ann_file": root + "annotations/instances_val.json",
                 "train_cfg.max_iters": iters, "train_cfg.val_interval": 1000, "train_dataloader.batch_size": 2,
                 "default_hooks.checkpoint.type": hook, "default_hooks.checkpoint.interval": 2,
                 "default_hooks.checkpoint.max_keep_ckpts": keep, "default_hooks.logger.interval": 1})
    return ["--cfg-options"] + [f"{k}={v}" for k, v in opts.items()]


def _train(work, *args, env=None, timeout=600):
    out = subprocess.run([sys.executable, TRAIN, QS_DET, "--work-dir", str(work), *args], capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return out.returncode, out.stdout + out.stderr


def _loadable(path):
    import torch
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.parametrize("hook", ["SafeCheckpointHook", "CheckpointHook"])
def test_a_save_killed_midway(hook, data, tmp_path):
    """Killed inside the second save (iteration 4), with max_keep_ckpts=1. SafeCheckpointHook keeps
    iteration 2 complete and named by last_checkpoint, and --resume finishes the run; mmengine's own
    hook (the control) has deleted iteration 2 before writing 4 and leaves nothing to resume from."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(KILLER)
    work = tmp_path / "work"
    env = {"KILL_AT_SAVE": "2", "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    rc, out = _train(work, *_options(data, 6, hook=hook), env=env)
    assert rc == -signal.SIGKILL, out[-3000:]
    named = (work / "last_checkpoint").read_text().strip()
    if hook == "CheckpointHook":
        assert named.endswith("iter_2.pth") and not Path(named).exists()  # the upstream defect, reproduced
        return
    assert named.endswith("iter_2.pth") and _loadable(named), sorted(os.listdir(work))
    rc, out = _train(work, "--resume", *_options(data, 6))
    assert rc == 0, out[-3000:]
    assert "resumed" in out.lower() and _loadable(work / "iter_6.pth")
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_6.pth"]  # max_keep_ckpts=1, no temporaries
    assert not list(work.glob("*.tmp-*"))


def test_resume_from_a_truncated_latest_checkpoint(data, tmp_path):
    """--resume without a path takes the newest complete checkpoint, with a warning naming the cut one;
    an explicit corrupt path, or nothing complete to fall back on, is one clear line, no traceback."""
    work = tmp_path / "work"
    rc, out = _train(work, *_options(data, 4, keep=2))
    assert rc == 0, out[-3000:]
    latest = work / "iter_4.pth"
    latest.write_bytes(latest.read_bytes()[:10_000])  # a save cut short
    rc, out = _train(work, "--resume", str(latest), *_options(data, 4, keep=2))
    assert rc == 2 and "Traceback" not in out, out[-3000:]
    assert f"--resume checkpoint '{latest}' is incomplete or corrupt" in out and f"--resume {work / 'iter_2.pth'}" in out
    rc, out = _train(work, "--resume", *_options(data, 4, keep=2))
    assert rc == 0, out[-3000:]
    assert f"WARNING: the latest checkpoint '{latest}' is incomplete or corrupt" in out
    assert f"resuming from '{work / 'iter_2.pth'}'" in out and _loadable(latest)  # iteration 4 saved again
    (work / "iter_2.pth").write_bytes(b"")
    latest.write_bytes(latest.read_bytes()[:10_000])
    rc, out = _train(work, "--resume", *_options(data, 4, keep=2))
    assert rc == 2 and "Traceback" not in out, out[-3000:]
    assert "cannot resume" in out and "holds no complete one; start again without --resume" in out


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_killed_rank_ends_the_job_and_resume_finishes_it(data, tmp_path, free_port):
    """2 CPU ranks under tools/dist_train.sh: SIGKILL one after a checkpoint is complete; torchrun ends the
    job within a bounded time with a non-zero exit, and --resume runs it to its final iteration."""
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PORT": str(free_port), "PYTHON": sys.executable}
    opts = _options(data, 40)
    cmd = ["bash", str(ROOT / "tools" / "dist_train.sh"), QS_DET, "2", "--work-dir", str(work), *opts]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        named = None
        while time.time() < deadline and proc.poll() is None:
            marker = work / "last_checkpoint"
            named = marker.read_text().strip() if marker.exists() else None
            if named and Path(named).exists() and _loadable(named):
                break
            time.sleep(1)
        assert proc.poll() is None and named, "no complete checkpoint before the job ended"
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        killed_at = time.time()
        os.kill(ranks[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
        ended = time.time() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, out[-3000:]
    assert ended < 120, f"the job took {ended:.0f} s to end after a rank died"
    print(f"killed rank 1 after {named}; torchrun ended the job {ended:.1f} s later with exit {proc.returncode}")
    cmd[-len(opts):] = ["--resume"] + opts
    env["PORT"] = str(free_port + 1 if free_port < 65000 else free_port - 1)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert _loadable(work / "iter_40.pth"), sorted(os.listdir(work))
    assert "resumed" in (done.stdout + done.stderr).lower()
