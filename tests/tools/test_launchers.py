"""The launch scripts: cluster (Slurm) and torchrun, each putting the checkout on PYTHONPATH so that it
runs on a node without an editable install; srun and python are stand-ins that record their call."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _recorder(tmp_path, name):
    log = tmp_path / f"{name}.log"
    exe = tmp_path / "bin" / name
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(f'#!/usr/bin/env bash\necho "PYTHONPATH=$PYTHONPATH" > {log}\nprintf "%s\\n" "$@" >> {log}\n')
    exe.chmod(0o755)
    return log


def _run(tmp_path, script, *args, **env):
    # The scripts' own default interpreter unless a test names one (CI exports PYTHON=python3).
    base = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    return subprocess.run(["bash", str(REPO / "tools" / script), *args], capture_output=True, text=True, timeout=60,
                          env={**base, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **env})


def test_slurm_train_and_test_call_srun_as_mmdets_do(tmp_path):
    log = _recorder(tmp_path, "srun")
    out = _run(tmp_path, "slurm_train.sh", "gpu", "job1", "configs/x.py", "work_dirs/x", "--amp", GPUS="16",
               SRUN_ARGS="--time=1:00:00")
    assert out.returncode == 0, out.stderr
    call = log.read_text().splitlines()
    assert call[0].split("=", 1)[1].split(":")[0] == str(REPO)
    assert call[1:8] == ["-p", "gpu", "--job-name=job1", "--gres=gpu:8", "--ntasks=16", "--ntasks-per-node=8",
                         "--cpus-per-task=5"]
    assert call[9:] == ["--time=1:00:00", "python", "-u", str(REPO / "tools" / "train.py"), "configs/x.py",
                        "--work-dir", "work_dirs/x", "--amp", "--launcher", "slurm"]
    out = _run(tmp_path, "slurm_test.sh", "gpu", "job2", "configs/x.py", "x.pth", "--tta")
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines()[-6:] == [str(REPO / "tools" / "test.py"), "configs/x.py", "x.pth", "--tta",
                                                  "--launcher", "slurm"]
    assert _run(tmp_path, "slurm_train.sh", "gpu").returncode == 2


def test_dist_scripts_put_the_checkout_on_pythonpath(tmp_path):
    log = _recorder(tmp_path, "python")
    out = _run(tmp_path, "dist_train.sh", "configs/x.py", "2", PYTHON=str(tmp_path / "bin" / "python"),
               PYTHONPATH="/elsewhere")
    assert out.returncode == 0, out.stderr
    call = log.read_text().splitlines()
    assert call[0] == f"PYTHONPATH={REPO}:/elsewhere"
    assert call[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in call
    assert call[-4:] == [str(REPO / "tools" / "train.py"), "configs/x.py", "--launcher", "pytorch"]
