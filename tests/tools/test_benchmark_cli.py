"""tools/benchmark_memory.py: every suite runs at a tiny shape on the CPU and writes its report."""
import json
import os
import subprocess
import sys

import pytest

import benchmark_memory
from bench.throughput import largest_batch, parse_model

TOOLS = os.path.dirname(os.path.abspath(benchmark_memory.__file__))


def _rows(out):
    return {r["name"]: r for r in json.load(open(os.path.join(out, "benchmark.json")))["rows"]}


def test_kernels_and_backbones_and_depth(tmp_path):
    assert benchmark_memory.main(["kernels", "--archs", "s0", "--input", "2x64x64", "--out", str(tmp_path / "k")]) == 0
    k = _rows(tmp_path / "k")
    assert k["revbifpn_s0 reversible bn=train"]["kernels"] > k["revbifpn_s0 plain bn=train"]["kernels"]
    out = str(tmp_path / "b")
    for p in ("peak", "time"):
        assert benchmark_memory.main(["backbones", "--archs", "s0", "--plain-segments", "2,in2,plain", "--input", "1x64x64",
                                      "--pass", p, "--rounds", "1", "--out", out]) == 0
    b = _rows(out)
    assert set(b) == {"revbifpn_s0 reversible", "revbifpn_s0 plain_segments=2", "revbifpn_s0 plain_segments=2,from_input",
                      "revbifpn_s0 plain"}
    assert all("saved_gb_per_sample" in r and r["step_s"] > 0 for r in b.values())
    assert b["revbifpn_s0 plain"]["saved_gb_per_sample"] > b["revbifpn_s0 reversible"]["saved_gb_per_sample"]
    assert "Ratios" in open(os.path.join(out, "benchmark.md")).read()
    assert benchmark_memory.main(["depth", "--exts", "2,4", "--input", "1x64x64", "--out", str(tmp_path / "d")]) == 0
    assert benchmark_memory.main(["report", "--out", out]) == 0


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        benchmark_memory.parse_args(["backbones", "--input", "800x1344", "--out", "x"])
    with pytest.raises(SystemExit):
        benchmark_memory.parse_args(["fair-fight", "--pass", "all", "--device", "cpu", "--out", "x"])
    assert parse_model("hrnetv2p_w18+cp") == ("hrnetv2p_w18", True, {})
    assert parse_model("revbifpn_s3@plain_segments=2;plain_from=input") == (
        "revbifpn_s3", False, {"plain_segments": 2, "plain_from": "input"})


def test_earlier_spellings_still_work_and_say_so(capsys):
    """``--budgets`` is now ``--plain-segments`` and fair-fight's dtype list ``--dtypes`` (``--amp`` is a switch
    elsewhere); the old spellings set the new options and warn."""
    args = benchmark_memory.parse_args(["backbones", "--budgets", "2,plain", "--out", "x"])
    assert args.plain_segments == "2,plain"
    assert "--budgets is now called --plain-segments" in capsys.readouterr().err
    args = benchmark_memory.parse_args(["fair-fight", "--amp", "fp32,bf16", "--out", "x"])
    assert args.dtypes == "fp32,bf16"
    assert "--amp is now called --dtypes" in capsys.readouterr().err


@pytest.mark.parametrize("limit,max_batch", [(0, 8), (1, 8), (5, 8), (13, 16), (40, 32)])
def test_largest_batch_search(limit, max_batch):
    tried = []

    def fits(b):
        tried.append(b)
        return {"b": b} if b <= limit else None
    b, res = largest_batch(fits, max_batch)
    assert b == min(limit, max_batch) and (res is None) == (b == 0)
    assert len(tried) <= 2 * max_batch.bit_length()


@pytest.mark.mm
def test_throughput_under_a_small_cap_on_cpu(tmp_path):
    """The largest batch under the cap, found with fresh-process probes: the budget setting, which keeps
    more activations, never fits a larger batch than the reversible default."""
    out = str(tmp_path / "t")
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "benchmark_memory.py"), "throughput", "--models",
                           "revbifpn_s0,revbifpn_s0@plain_segments=7", "--caps", "0.15", "--sizes", "64x64",
                           "--max-batch", "4", "--rounds", "1", "--out", out], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(_rows(out).values())
    rev, plain = rows
    assert rev["batch"] >= plain["batch"] >= 1, rows
    assert all(r["peak_gb"] <= 0.15 * 2 ** 30 / 1e9 and r["images_s"] > 0 for r in rows), rows


@pytest.mark.mm
def test_fair_fight_and_seg_at_a_tiny_shape(tmp_path):
    assert benchmark_memory.main(["fair-fight", "--input", "1x64x64", "--detectors", "faster,neck", "--backbones",
                                  "revbifpn_s0,r50_fpn", "--with-cp", "on", "--out", str(tmp_path / "f")]) == 0
    f = _rows(tmp_path / "f")
    assert {"faster_rcnn revbifpn_s0", "faster_rcnn r50_fpn + with_cp", "r50_fpn + with_cp backbone+neck"} <= set(f)
    assert "box AP paper" in open(tmp_path / "f" / "benchmark.md").read()
    assert benchmark_memory.main(["seg", "--input", "1x64x128", "--backbones", "revbifpn_s0", "--heads", "fcn,lean",
                                  "--out", str(tmp_path / "s")]) == 0
    s = _rows(tmp_path / "s")
    assert s["revbifpn_s0 lean bn=train 64x128"]["saved_gb_per_sample"] < s["revbifpn_s0 fcn bn=train 64x128"][
        "saved_gb_per_sample"]


def test_fair_fight_compiled_adds_a_compiled_row_per_revbifpn_backbone():
    """``--compiled``: each RevBiFPN detector also with ``compile_transforms=True``; baselines unchanged."""
    from bench import fair_fight
    args = benchmark_memory.parse_args(["fair-fight", "--backbones", "revbifpn_s3,r50_fpn", "--with-cp", "off",
                                        "--compiled", "--out", "x"])
    cases = fair_fight.cases(args, "cpu")
    assert [c.name for c in cases] == ["faster_rcnn revbifpn_s3", "faster_rcnn revbifpn_s3 compiled",
                                       "faster_rcnn r50_fpn"]
    assert cases[1].info["compile_transforms"] is True and "compile_transforms" not in cases[0].info
