"""Resume reproduces the uninterrupted run; reversible training tracks plain autograd.

Both use the real mmengine Runner (tools/train.py) on the generated dataset with
deterministic settings: no random augmentation, unshuffled data, PseudoSamplers (no
random RoI sampling), no stochastic depth, fixed seed, one CPU thread.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("mmdet")

from curves import curve_config, max_relative_divergence, read_losses  # noqa: E402

pytestmark = [pytest.mark.mm, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(16, 2, (128, 128), seed=5)


def _cfg(tmp_path, name, data, iters, ckpt, mode="reversible", total=None, stream="auto"):
    path = tmp_path / f"{name}.py"
    path.write_text(curve_config(data, iters=iters, ckpt=ckpt, mode=mode, stream=stream, total=total))
    return str(path)


def _train(cfg, work, *extra):
    out = subprocess.run([sys.executable, "tools/train.py", cfg, "--work-dir", work, *extra], cwd=ROOT,
                         capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_resume_reaches_the_same_loss(tmp_path, data):
    full = _cfg(tmp_path, "full", data, iters=8, ckpt=8)
    half = _cfg(tmp_path, "half", data, iters=4, ckpt=4, total=8)
    _train(full, str(tmp_path / "full"))
    _train(half, str(tmp_path / "part"))
    _train(full, str(tmp_path / "part"), "--resume", str(tmp_path / "part" / "iter_4.pth"))
    a, b = read_losses(str(tmp_path / "full")), read_losses(str(tmp_path / "part"))
    assert set(range(5, 9)) <= set(b), b
    for it in range(5, 9):
        assert abs(a[it] - b[it]) <= 1e-4 * abs(a[it]), (it, a[it], b[it])


def test_reversible_loss_curve_tracks_plain(tmp_path, data):
    """30 iterations of reversible vs plain training from the same start.

    Training amplifies any round-off difference (AdamW normalises tiny gradients), so the
    yardstick is the divergence between two *plain* runs that differ only in round-off
    (float64 vs float32 residual streams): the reversible run must stay as close to the
    plain run as that. The 300-iteration comparison is ``tools/curves.py``.
    """
    curves = {}
    for name, mode, stream in (("rev", "reversible", "auto"), ("plain", "plain", "auto"),
                               ("plain32", "plain", "float32")):
        cfg = _cfg(tmp_path, name, data, iters=30, ckpt=30, mode=mode, stream=stream)
        _train(cfg, str(tmp_path / name))
        curves[name] = read_losses(str(tmp_path / name))
    rev, plain, ref = curves["rev"], curves["plain"], curves["plain32"]
    assert len(rev) == len(plain) == len(ref) == 30

    d_rev, d_ref = max_relative_divergence(rev, plain), max_relative_divergence(ref, plain)
    print(f"loss divergence over 30 iterations: reversible vs plain {d_rev:.2e}, "
          f"plain(fp32 streams) vs plain {d_ref:.2e}")
    assert d_rev <= 3 * d_ref + 1e-4, (d_rev, d_ref)
    tail = lambda c: sum(c[i] for i in range(21, 31)) / 10  # noqa: E731
    assert abs(tail(rev) - tail(plain)) <= 0.02 * tail(plain)
    assert tail(plain) < plain[1], "the run did not learn"
