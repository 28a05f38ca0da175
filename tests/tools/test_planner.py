"""The memory planner (revbifpn_mm.mm.planner, tools/plan_memory.py).

* Its batch-4 prediction, made from measurements at batch 1 and 2, is within 10 % of the
  peak measured at batch 4 (same method, fresh process) for a detector and a segmentor.
* Its fixed costs count the optimizer state the optimizer really keeps (AdamW: two buffers
  per parameter, SGD with momentum: one).
* A config that does not build gives one clear error line naming the reason.
* Plain mode is reported as not measured, with the reason, where it does not fit.
* The largest batch follows the stated formula.

The measurements run the quickstart S0 configs at 256x256 on the CPU (seconds per step).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from revbifpn_mm.mm import planner  # noqa: E402
from revbifpn_mm.core.memory import RssPeakProbe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QS_DET = str(ROOT / "configs" / "quickstart" / "faster_rcnn_revbifpn_s0_synthetic.py")
QS_SEG = str(ROOT / "configs" / "quickstart" / "fcn_revbifpn_s0_synthetic_seg.py")
SHAPE = (256, 256)
TOLERANCE = 0.10

needs_rss = pytest.mark.skipif(not RssPeakProbe.available(), reason="peak resident set needs Linux + glibc")
pytestmark = pytest.mark.mm


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def _probe(config, batch, **kw):
    return planner.probe_in_subprocess(config, "reversible", batch, SHAPE, threads=1, timeout=600, **kw)


@needs_rss
@pytest.mark.parametrize("config", [QS_DET, QS_SEG], ids=["faster_rcnn", "fcn"])
def test_batch4_prediction_within_10_percent_of_measurement(config):
    probes = [_probe(config, b) for b in (1, 2)]
    plan = planner.ModePlan("reversible", probes)
    measured = _probe(config, 4)
    assert plan.per_sample_bytes > 0, probes
    predicted = plan.allocated(4)
    err = abs(predicted - measured.peak_bytes) / measured.peak_bytes
    detail = (f"predicted {predicted / 1e6:.1f} MB, measured {measured.peak_bytes / 1e6:.1f} MB "
              f"(fixed {measured.fixed_bytes / 1e6:.1f} MB; fwd+bwd working set b=1/2/4: "
              f"{probes[0].fwd_bwd_bytes / 1e6:.1f}/{probes[1].fwd_bwd_bytes / 1e6:.1f}/"
              f"{measured.fwd_bwd_bytes / 1e6:.1f} MB)")
    print(detail)
    assert err <= TOLERANCE, detail
    # the activation part alone, without the fixed costs that both sides share
    act_pred = predicted - plan.fixed_bytes
    act_meas = measured.peak_bytes - measured.fixed_bytes
    assert abs(act_pred - act_meas) / act_meas <= TOLERANCE, detail


@needs_rss
def test_fixed_costs_count_the_optimizer_state():
    adamw = _probe(QS_DET, 1)  # the quickstart uses AdamW
    sgd = _probe(QS_DET, 1, cfg_options={"optim_wrapper.optimizer": dict(type="SGD", lr=0.01, momentum=0.9)})
    assert adamw.optimizer == "AdamW" and sgd.optimizer == "SGD"
    assert adamw.grads_bytes > 0 and adamw.grads_bytes <= adamw.params_bytes
    assert adamw.optim_bytes == 2 * adamw.grads_bytes  # exp_avg + exp_avg_sq per trained parameter
    assert sgd.optim_bytes == sgd.grads_bytes  # one momentum buffer per trained parameter
    assert sgd.params_bytes == adamw.params_bytes


def _tool(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plan_memory.py"), *args], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_config_that_does_not_build_gives_one_clear_error():
    rc, out, err = _tool(QS_DET, "--quick", "--threads", "1", "--cfg-options", "model.backbone.arch=s9")
    assert rc == 2, out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "does not build" in errors[0] and "s9" in errors[0], errors[0]
    assert "Traceback" not in err


def test_missing_config_gives_one_clear_error(tmp_path):
    rc, out, err = _tool(str(tmp_path / "nope.py"), "--quick")
    assert rc == 2 and "error: config file not found" in err, out + err
    assert "Traceback" not in err


@needs_rss
def test_plain_mode_not_measured_where_it_does_not_fit():
    # 0.1 % of the available memory (tens of MB) cannot hold a plain training step
    plan = planner.make_plan(QS_DET, shape=SHAPE, modes=("plain",), ram_fraction=0.001, threads=1)
    (mode,) = plan.modes
    assert not mode.measured
    assert "does not fit" in mode.skipped and "available memory" in mode.skipped, mode.skipped
    text = planner.render_plan(plan, (24,))
    assert "plain" in text and "not measured" in text


def _fake(batch, fb, fixed=1_000_000_000, opt=0):
    return planner.Probe(mode="reversible", batch=batch, shape=SHAPE, device="cpu", amp=False, optimizer="SGD",
                         params_bytes=fixed // 3, buffers_bytes=fixed - 3 * (fixed // 3), grads_bytes=fixed // 3,
                         optim_bytes=fixed // 3, fwd_bwd_bytes=fb, optim_step_bytes=opt, step_s=0.0)


def test_largest_batch_follows_the_formula():
    gb = 1_000_000_000
    plan = planner.ModePlan("reversible", [_fake(1, gb), _fake(2, 2 * gb)])
    assert plan.per_sample_bytes == gb and plan.step_constant_bytes == 0
    # on_gpu(b) = (1 GB fixed + b GB) * 1.1 + 1 GB context <= 24 GB  <=>  b <= 19.9
    assert plan.largest_batch(24 * gb, context_gb=1.0, fragmentation=0.1) == 19
    assert plan.on_gpu(19, 1.0, 0.1) <= 24 * gb < plan.on_gpu(20, 1.0, 0.1)
    assert plan.largest_batch(2 * gb, context_gb=1.0, fragmentation=0.1) == 0  # not even batch 1
    # an optimizer step larger than the forward + backward sets the floor of every batch
    big_opt = planner.ModePlan("reversible", [_fake(1, gb, opt=5 * gb), _fake(2, 2 * gb, opt=5 * gb)])
    assert big_opt.allocated(1) == big_opt.allocated(4) == 6 * gb
    assert big_opt.allocated(8) == 9 * gb


@needs_rss
def test_amp_on_cpu_names_the_op_that_rejects_bfloat16():
    # mmcv 2.1's CPU NMS (in the RPN) takes float32 only: the plan says so instead of a traceback
    rc, out, err = _tool(QS_DET, "--quick", "--amp", "--modes", "reversible", "--threads", "1")
    assert rc == 0, out + err
    row = next(line for line in out.splitlines() if line.startswith("reversible"))
    assert "not measured" in row and "bfloat16 autocast" in row and "mmcv.ops." in row and "rejects it" in row, row
    assert "Traceback" not in err


def test_training_shape_follows_the_pipeline():
    det = planner.load_config(str(ROOT / "configs" / "faster_rcnn_revbifpn_s3.py"))
    # mmdet's Resize scale is (w, h) = (1333, 800), keep_ratio: a landscape image is 800 high and
    # at most 1333 wide, padded to the data preprocessor's multiple of 32
    assert planner.training_shape(det)[:2] == (800, 1344)
    det.train_dataloader.dataset.pipeline[2] = dict(type="RandomResize", scale=[(1333, 640), (1333, 800)],
                                                    keep_ratio=True)
    assert planner.training_shape(det)[:2] == (800, 1344)  # the largest scale of the range
    seg = planner.load_config(QS_SEG)
    assert planner.training_shape(seg)[:2] == (256, 256)  # data_preprocessor size
    seg.model.data_preprocessor.pop("size")
    seg.train_dataloader.dataset.pipeline.insert(
        2, dict(type="RandomResize", scale=(1024, 512), ratio_range=(0.5, 2.0), keep_ratio=True))
    assert planner.training_shape(seg)[:2] == (1024, 2048)  # scale x the largest ratio
    seg.train_dataloader.dataset.pipeline.insert(3, dict(type="RandomCrop", crop_size=(512, 1024)))
    assert planner.training_shape(seg)[:2] == (512, 1024)  # mmseg's crop_size is (h, w)
    seg.train_dataloader.dataset.pipeline = [dict(type="LoadImageFromFile")]
    with pytest.raises(planner.PlanError, match="--shape"):
        planner.training_shape(seg)



def test_render_names_allowance_and_shows_partial_plain_measurement():
    gb = 1_000_000_000
    rev = planner.ModePlan("reversible", [_fake(1, gb), _fake(2, 2 * gb)])
    plain = planner.ModePlan("plain", [_fake(1, 6 * gb)], skipped="not measured at batch 2: does not fit")
    plan = planner.Plan(config="x.py", scope="mmdet", shape=(800, 1344), shape_source="test", amp=False,
                        device="cpu", modes=[rev, plain])
    text = planner.render_plan(plan, (12, 24), context_gb=1.0, fragmentation=0.1)
    assert "CUDA context + caching-allocator fragmentation: 1.0 GB + 10%" in text
    row = next(line for line in text.splitlines() if line.startswith("reversible"))
    assert row.split()[-2:] == ["9", "19"]  # largest batches on 12 and 24 GB
    assert "not measured at batch 2" in text
    assert "batch 1 measured: 7.00 GB allocated" in text  # 1 GB fixed + 6 GB working set; no prediction
