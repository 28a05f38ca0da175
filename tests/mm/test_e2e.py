"""End to end through the real mmengine Runner, via the command-line tools.

A tiny synthetic dataset (8 train / 4 val images of 256x256) and a few iterations of
the quickstart configs: training saves a checkpoint, ``--resume`` continues from it,
``load_from`` loads it (torch.load weights-only compat), ``tools/test.py`` evaluates it
with CocoMetric; mmseg: one training step of the encoder-decoder. Missing or empty
datasets must stop with a clear message, not a traceback.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmdet")

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "tools" / "train.py")
TEST = str(ROOT / "tools" / "test.py")
QS_DET = str(ROOT / "configs" / "quickstart" / "faster_rcnn_revbifpn_s0_synthetic.py")
QS_SEG = str(ROOT / "configs" / "quickstart" / "fcn_revbifpn_s0_synthetic_seg.py")
COCO_CFG = str(ROOT / "configs" / "faster_rcnn_revbifpn_s0.py")
FLOAT = r"(-?\d+(?:\.\d+)?)"


def run_tool(args, cwd=ROOT, timeout=600):
    env = dict(os.environ)
    # One thread: the small convs gain nothing from more, and a shared CPU makes OpenMP spin.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, *args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def det_options(root, iters, **extra):
    root = str(root).rstrip("/") + "/"
    opts = {
        "train_dataloader.dataset.data_root": root,
        "val_dataloader.dataset.data_root": root,
        "test_dataloader.dataset.data_root": root,
        "val_evaluator.ann_file": root + "annotations/instances_val.json",
        "test_evaluator.ann_file": root + "annotations/instances_val.json",
        "train_dataloader.batch_size": 2,
        "train_cfg.max_iters": iters,
        "train_cfg.val_interval": iters,
        "default_hooks.logger.interval": 1,
        # an untrained head scores below the default 0.05: keep every box so the metric is numeric
        "model.test_cfg.rcnn.score_thr": 0.0,
        "randomness.seed": 0,
    }
    opts.update(extra)
    return ["--cfg-options"] + [f"{k}={v}" for k, v in opts.items()]


@pytest.fixture(scope="module")
def tiny_root(synthetic_coco):
    return synthetic_coco(8, 4, (256, 256), seed=1)


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """Two training iterations of the quickstart Faster R-CNN, validated at the end."""
    work = tmp_path_factory.mktemp("work") / "det"
    rc, out = run_tool([TRAIN, QS_DET, "--work-dir", str(work), *det_options(tiny_root, 2)])
    assert rc == 0, out[-5000:]
    # the quickstart keeps one checkpoint (max_keep_ckpts=1): the resume test replaces iter_2.pth
    ckpt = work.parent / "iter_2_copy.pth"
    shutil.copyfile(work / "iter_2.pth", ckpt)
    return work, out, ckpt


@pytest.mark.slow
def test_train_saves_checkpoint_and_evaluates(trained):
    work, out, _ = trained
    assert (work / "iter_2.pth").is_file()
    assert (work / "last_checkpoint").is_file()
    m = re.search(r"coco/bbox_mAP: " + FLOAT, out)
    assert m is not None, out[-3000:]
    assert 0.0 <= float(m.group(1)) <= 1.0


@pytest.mark.slow
def test_checkpoint_loads_with_weights_only_torch_load(trained):
    import torch
    from mmengine.runner.checkpoint import _load_checkpoint

    import revbifpn_mm  # noqa: F401  (allow-lists mmengine's checkpoint types)

    ckpt = _load_checkpoint(str(trained[2]), map_location="cpu")  # torch.load default
    assert ckpt["meta"]["iter"] == 2
    assert {"state_dict", "optimizer", "message_hub", "param_schedulers"} <= set(ckpt)
    assert any(k.startswith("backbone.rev_stack.") for k in ckpt["state_dict"])
    # also with the weights-only loader asked for explicitly
    again = torch.load(str(trained[2]), map_location="cpu", weights_only=True)
    assert again["meta"]["iter"] == 2


@pytest.mark.slow
def test_resume_continues_from_checkpoint(trained, tiny_root):
    work = trained[0]
    rc, out = run_tool([TRAIN, QS_DET, "--work-dir", str(work), "--resume", *det_options(tiny_root, 4)])
    assert rc == 0, out[-5000:]
    assert re.search(r"resumed epoch: \d+, iter: 2", out), out[-3000:]
    assert "Iter(train) [1/4]" not in out and "Iter(train) [3/4]" in out
    assert (work / "iter_4.pth").is_file()
    import torch
    import revbifpn_mm  # noqa: F401
    assert torch.load(str(work / "iter_4.pth"), map_location="cpu")["meta"]["iter"] == 4


@pytest.mark.slow
def test_load_from_checkpoint(trained, tiny_root, tmp_path):
    ckpt = trained[2]
    rc, out = run_tool([TRAIN, QS_DET, "--work-dir", str(tmp_path / "ft"),
                        *det_options(tiny_root, 1, load_from=str(ckpt))])
    assert rc == 0, out[-5000:]
    assert f"Load checkpoint from {ckpt}" in out
    assert (tmp_path / "ft" / "iter_1.pth").is_file()


@pytest.mark.slow
def test_test_tool_evaluates_checkpoint(trained, tiny_root, tmp_path):
    ckpt = trained[2]
    pkl = tmp_path / "preds.pkl"
    rc, out = run_tool([TEST, QS_DET, str(ckpt), "--work-dir", str(tmp_path / "test"), "--out", str(pkl),
                        *det_options(tiny_root, 2)])
    assert rc == 0, out[-5000:]
    m = re.search(r"coco/bbox_mAP: " + FLOAT, out)
    assert m is not None, out[-3000:]
    assert pkl.is_file() and pkl.stat().st_size > 0


def test_test_tool_with_test_time_augmentation(trained, tiny_root, tmp_path):
    """--tta as mmdet's test.py: the quickstart config has no tta_model / tta_pipeline, so DetTTAModel
    merges each image and its horizontal flip."""
    rc, out = run_tool([TEST, QS_DET, str(trained[2]), "--work-dir", str(tmp_path / "tta"), "--tta",
                        *det_options(tiny_root, 2)])
    assert rc == 0, out[-5000:]
    assert re.search(r"coco/bbox_mAP: " + FLOAT, out), out[-3000:]
    assert "DetTTAModel" in "".join(p.read_text() for p in (tmp_path / "tta").glob("*/vis_data/config.py"))


def _assert_clear_error(rc, out, *needles):
    assert rc == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for needle in needles:
        assert needle in out, out[-3000:]


def test_missing_coco_gives_clear_error(tmp_path):
    # cwd without data/: the COCO configs point at data/coco/
    rc, out = run_tool([TRAIN, COCO_CFG, "--work-dir", str(tmp_path / "w")], cwd=tmp_path)
    _assert_clear_error(rc, out, "data/coco/annotations/instances_train2017.json", "train2017",
                        "train_dataloader.dataset.data_root=", "tools/quickstart.py")


def test_missing_coco_gives_clear_error_in_test_tool(tmp_path):
    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"0")
    rc, out = run_tool([TEST, COCO_CFG, str(ckpt), "--work-dir", str(tmp_path / "w")], cwd=tmp_path)
    _assert_clear_error(rc, out, "data/coco/annotations/instances_val2017.json", "val2017",
                        "tools/quickstart.py")


def test_empty_dataset_gives_clear_error(tmp_path):
    from synthetic_data import generate_synthetic_coco

    root = tmp_path / "synthetic_coco"
    generate_synthetic_coco(root, num_train=0, num_val=2)
    rc, out = run_tool([TRAIN, QS_DET, "--work-dir", str(tmp_path / "w"), *det_options(root, 1)])
    _assert_clear_error(rc, out, "empty", "instances_train.json")


@pytest.mark.slow
def test_mmseg_quickstart_one_step(tiny_root, tmp_path):
    pytest.importorskip("mmseg")
    root = str(tiny_root).rstrip("/") + "/"
    opts = [f"{k}.dataset.data_root={root}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    opts += ["train_dataloader.batch_size=2", "train_cfg.max_iters=1", "train_cfg.val_interval=1",
             "default_hooks.logger.interval=1"]
    work = tmp_path / "seg"
    rc, out = run_tool([TRAIN, QS_SEG, "--work-dir", str(work), "--cfg-options", *opts])
    assert rc == 0, out[-5000:]
    assert re.search(r"Iter\(train\) \[1/1\].*loss: " + FLOAT, out), out[-3000:]
    assert re.search(r"mIoU: " + FLOAT, out), out[-3000:]
    assert (work / "iter_1.pth").is_file()
    scalars = list(work.glob("*/vis_data/scalars.json"))
    assert scalars and json.loads(scalars[0].read_text().splitlines()[0])["loss"] > 0
