"""The prepared GPU run (tools/gpu_measurements.sh, tools/gpu_experiments.py) on its CPU paths:
the shell script parses, every benchmark call in it parses, and each experiment runs at a tiny size."""
import json
import os
import re
import shlex
import subprocess

import pytest

import benchmark_memory
import gpu_experiments

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(benchmark_memory.__file__)), "gpu_measurements.sh")


def test_the_script_parses_and_every_call_in_it_does():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    text = open(SCRIPT).read().replace("\\\n", " ")
    models = re.findall(r'^MODELS="([^"]*)"', text, re.M)
    text = text.replace('"$MODELS"', ",".join(m.replace("$MODELS,", "") for m in models))
    steps = re.findall(r"^step \S+ (\d+) (.*)$", text, re.M)
    assert len(steps) == 9 and sum(int(s) for s, _ in steps) <= 360  # one call of at most 6 minutes
    calls = [c for _, c in steps]
    for call in calls:
        argv = shlex.split(call.replace('"$OUT', '"/tmp/out'))
        if argv[1] == "tools/benchmark_memory.py":
            args = benchmark_memory.parse_args(argv[2:])
            if args.suite == "throughput":
                assert len(args.models.split(",")) in (12, 2)  # every baseline, or S3 eager vs compiled
        else:
            assert argv[1] == "tools/gpu_experiments.py" and argv[2] in ("checks", "overhead", "graphs")


@pytest.mark.parametrize("what", ["checks", "overhead", "graphs"])
def test_experiments_run_on_the_cpu_at_a_tiny_size(what, tmp_path):
    out = tmp_path / f"{what}.json"
    assert gpu_experiments.main([what, "--device", "cpu", "--tiny", "--archs", "s0", "--rounds", "1",
                                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    if what == "checks":
        assert rows[0]["ok"] and all(r.get("bf16_cos_rev_plain", 1) > 0.999 for r in rows)
    elif what == "overhead":
        assert rows[0]["arch"] == "s0" and rows[0]["reversible_s"] > 0
    else:
        assert rows == [dict(experiment="cuda_graphs", captured=False, error="needs a CUDA device")]
