"""The quickstart really learns: tools/quickstart.py, shortened, reaches a bbox mAP far above chance.

Chance level is ~0 bbox mAP (untrained heads give no box above the score threshold;
random boxes give mAP < 0.01). ITERS / FLOOR were measured on 2 shared CPU cores
(1 torch thread, ~1.6 s per iteration of batch 4, 3-3.5 minutes in all): with 100
iterations the quickstart Faster R-CNN reached bbox mAP 0.414 (AP50 0.882) with the
default seed 0 and 0.574 (AP50 0.953) with seed 1 on the 50 validation images (80
iterations: 0.34 / 0.81). The floors (mAP > 0.25, AP50 > 0.6) leave room for
run-to-run and machine-to-machine noise while staying far above chance. The full
quickstart (120 iterations) reaches a bbox mAP of about 0.55.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmdet")

ROOT = Path(__file__).resolve().parents[2]
ITERS = 100
FLOOR = 0.25
FLOOR_AP50 = 0.6


@pytest.mark.slow
def test_quickstart_faster_rcnn_learns(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(ROOT / "tools" / "quickstart.py"), "--skip-mask", "--iters", str(ITERS),
           "--threads", "1", "--work-dir", str(tmp_path / "work"),
           "--data-root", str(tmp_path / "synthetic_coco")]
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "RevBiFPN quickstart summary" in out
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    metrics = summary["faster"]["metrics"]
    assert metrics["bbox_mAP"] > FLOOR, (metrics, out[-3000:])
    assert metrics["bbox_mAP_50"] > FLOOR_AP50, metrics
    assert Path(summary["faster"]["checkpoint"]).is_file()
