"""tools/setup_env.sh: what it refuses and what it would run (dry runs: nothing installed)."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _dry_run(tmp_path, *args, cuda="12.1"):
    """setup_env.sh --dry-run against a stand-in torch (a CUDA build when ``cuda``) and no nvcc."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text(f"__version__ = '2.13.0{'+cu' + cuda.replace('.', '') if cuda else ''}'\n"
                                      f"class version:\n    cuda = {cuda!r}\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "fake"),
           "CUDA_HOME": str(tmp_path / "no_cuda"), "HOME": str(tmp_path), "REVBIFPN_MM_CACHE": str(tmp_path / "c")}
    return subprocess.run(["bash", str(REPO / "tools" / "setup_env.sh"), "--dry-run", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=str(tmp_path))


def test_cuda_torch_without_nvcc_is_refused_with_the_fix(tmp_path):
    out = _dry_run(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "nvcc (the CUDA 12.1 toolkit) is not found" in out.stderr
    assert "GPU training would fail at the first RoIAlign" in out.stderr
    assert "--cpu-ops" in out.stderr and "CUDA_HOME" in out.stderr


def test_cpu_ops_on_a_cuda_torch_only_when_asked_and_loudly(tmp_path):
    out = _dry_run(tmp_path, "--cpu-ops")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING: no nvcc: mmcv gets CPU-only ops" in out.stdout
    assert "MMCV_WITH_OPS=1" in out.stdout and "FORCE_CUDA" not in out.stdout


def test_the_stack_comes_from_the_one_requirements_file(tmp_path):
    out = _dry_run(tmp_path, cuda="")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"-r {REPO / 'requirements' / 'mm.txt'}" in out.stdout
    assert "mmcv==2.1.0" in out.stdout and "FORCE_CUDA" not in out.stdout
    pins = (REPO / "requirements" / "mm.txt").read_text()
    setup = (REPO / "setup.py").read_text()
    assert "mmdet==3.3.0" in pins and "mmdet==" not in setup  # setup.py reads the file, it does not repeat it
