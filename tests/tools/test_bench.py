"""The measuring code of the benchmark (tools/bench/measure.py) and the probes it uses
(tools/meters.py): peak probes, kernel count, interleaved timing, the memory-only step."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import bench.measure
from bench.measure import (Case, count_step_kernels, interleaved_min_times, measure_case, measure_step, merge_rows,
                           peak_pass, time_pass, training_loss)
from meters import KernelCounter, PeakProbe, RssPeakProbe


class _CallsSinceReset(PeakProbe):
    """Reads, like CUDA's allocator, only what ran after the reset: here the forward calls."""

    def __init__(self, counter):
        self.counter = counter
        self.at_reset = None

    def reset(self):
        self.at_reset = self.counter["calls"]

    def read(self):
        return 1000 * (self.counter["calls"] - self.at_reset)


def _counting_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    counter = {"calls": 0}
    x = torch.randn(1, 3, 8, 8)

    def run():
        counter["calls"] += 1
        return model(x)
    return model, run, counter


@pytest.mark.parametrize("steps", [0, 3])
def test_peak_is_read_from_a_step_after_the_reset_timed_or_not(steps):
    # With steps=0 (memory only, `--no-time`) a step must still run between reset and read;
    # otherwise a CUDA reading is ~0 (nothing allocated since the reset).
    model, run, counter = _counting_model()
    probe = _CallsSinceReset(counter)
    res = measure_step(run, list(model.parameters()), torch.device("cpu"), warmup=1, steps=steps,
                       probe=probe, saved=False)
    assert res["peak_bytes"] == 1000  # exactly one step between reset and read
    assert (res["step_s"] == res["step_s"]) == (steps > 0)  # NaN without timed steps
    assert all(p.grad is None for p in model.parameters())


_RSS_SCRIPT = textwrap.dedent("""
    import json, torch
    from torch import nn
    from meters import RssPeakProbe
    from bench.measure import measure_step
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(1, 3, 256, 256)
    probe = RssPeakProbe()
    params = list(model.parameters())
    out = {}
    for steps in (0, 2):
        out[steps] = measure_step(lambda: model(x), params, torch.device("cpu"), warmup=1, steps=steps,
                                  probe=probe)
    print(json.dumps(out))
""")


@pytest.mark.skipif(not RssPeakProbe.available(), reason="needs Linux /proc/self/clear_refs and glibc")
def test_cpu_peak_memory_only_reads_the_same_as_timed():
    # Own process: the probe changes glibc's allocation policy for the whole process.
    import json
    tools = os.path.dirname(os.path.dirname(os.path.abspath(bench.measure.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tools, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    mem_only, timed = res["0"], res["2"]
    saved = timed["saved_bytes"]  # the input and two 32 x 256 x 256 activations: ~17 MB
    assert saved > 10e6
    for r in (mem_only, timed):
        assert r["peak_bytes"] >= 0.8 * saved, r  # a whole step was seen, activations included
    assert 0.8 < mem_only["peak_bytes"] / timed["peak_bytes"] < 1.25


def test_kernel_counter_skips_views_and_allocations():
    x = torch.randn(4, 6)
    with KernelCounter() as c:
        y = x.view(6, 4).t().unsqueeze(0).reshape(4, 6)  # views only
        torch.empty(3)
    assert c.total == 0, c.by_op
    with KernelCounter() as c:
        z = (y + 1).relu().sum()
    assert c.total == 3 and set(c.by_op) == {"add", "relu", "sum"}, c.by_op
    assert z.item() == pytest.approx((x + 1).relu().sum().item())


def test_step_kernel_count_does_not_depend_on_input_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    counts = []
    for size in (16, 48):
        x = torch.randn(2, 3, size, size)
        counts.append(count_step_kernels(lambda: model(x)))
        model.zero_grad(set_to_none=True)
    fwd, bwd = counts[0]
    assert fwd > 4 and bwd > 4  # at least one kernel per layer each way
    assert counts[0] == counts[1]


def test_measure_step_counts_kernels_on_request():
    model, run, counter = _counting_model()
    res = measure_step(run, list(model.parameters()), torch.device("cpu"), warmup=0, steps=0,
                       saved=False, kernels=True)
    assert res["kernels"] == res["kernels_fwd"] + res["kernels_bwd"] > 0
    assert counter["calls"] == 1
    assert "peak_bytes" not in res and "saved_bytes" not in res
    # after warm-up and timed steps (gradients accumulated) the count is the same: a step as
    # after an optimizer's zero_grad(), no gradient accumulation kernels
    again = measure_step(run, list(model.parameters()), torch.device("cpu"), warmup=1, steps=2,
                         saved=False, kernels=True)
    assert (again["kernels_fwd"], again["kernels_bwd"]) == (res["kernels_fwd"], res["kernels_bwd"])


def test_interleaved_times_take_the_minimum_per_step_in_turn():
    order, now = [], [0.0]
    durations = {"a": iter([3.0, 1.0, 2.0]), "b": iter([0.5, 0.7, 0.2])}

    def make(name):
        def fn():
            order.append(name)
            now[0] += next(durations[name])
        return fn
    best = interleaved_min_times({"a": make("a"), "b": make("b")}, rounds=3, clock=lambda: now[0])
    assert order == ["a", "b"] * 3
    assert best == {"a": pytest.approx(1.0), "b": pytest.approx(0.2)}
    with pytest.raises(ValueError, match="rounds"):
        interleaved_min_times({"a": make("a")}, rounds=0)


def test_training_loss_sums_loss_entries_and_rejects_dicts_without_any():
    t = torch.ones(2, requires_grad=True)
    loss = training_loss({"loss_cls": [t, 2 * t], "loss_bbox": t, "acc": torch.tensor(100.0)})
    assert loss.item() == pytest.approx(2 + 4 + 2)
    with pytest.raises(ValueError, match="loss"):
        training_loss({"acc": t})


def test_measure_step_rejects_unknown_amp():
    model, run, _ = _counting_model()
    with pytest.raises(ValueError, match="amp must be one of"):
        measure_step(run, list(model.parameters()), torch.device("cpu"), amp="fp8")


def _logged_cases(events, names=("a", "b"), broken=None):
    cases = []
    for name in names:
        def build(name=name):
            events.append(("build", name))
            if name == broken:
                raise RuntimeError(f"{name}: no kernel for this dtype\nsecond line")
            torch.manual_seed(0)
            model = nn.Linear(4, 2)
            x = torch.randn(3, 4)

            def run():
                events.append(("step", name))
                return model(x)
            return model, run
        cases.append(Case(name, "toy", build, info=dict(tag=name.upper())))
    return cases


def test_time_pass_builds_every_model_before_timing_and_survives_a_broken_one():
    events = []
    rows = time_pass(_logged_cases(events, ("a", "b", "c"), broken="b"), torch.device("cpu"), rounds=2)
    first_timed = len([e for e in events if e[0] == "build"]) + 2  # builds + one warm-up step each (a, c)
    assert all(e[0] == "build" or e[1] != "b" for e in events)
    assert [e[0] for e in events[:first_timed]].count("build") == 3  # all built before the rounds
    assert [e[1] for e in events[first_timed:]] == ["a", "c", "a", "c"]  # interleaved rounds
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["step_s"] > 0 and rows[0]["tag"] == "A" and rows[2]["step_s"] > 0
    assert rows[1]["error"].startswith("RuntimeError: b: no kernel for this dtype (in build, ")
    assert "step_s" not in rows[1]


def test_peak_pass_then_time_pass_merge_into_one_row_per_case():
    events = []
    peak = peak_pass(_logged_cases(events), torch.device("cpu"), warmup=1, kernels=True)
    times = time_pass(_logged_cases(events), torch.device("cpu"), rounds=1)
    assert all(r["step_s"] != r["step_s"] for r in peak)  # NaN: the peak pass takes no timed steps
    merged = merge_rows(peak, times)
    assert [r["name"] for r in merged] == ["a", "b"]
    for r, p, t in zip(merged, peak, times):
        assert r["step_s"] == t["step_s"] > 0
        assert r["kernels"] == p["kernels"] > 0 and r["saved_gb_per_sample"] == p["saved_gb_per_sample"] > 0
    # the other order keeps the measured time too
    assert [r["step_s"] for r in merge_rows(times, peak)] == [t["step_s"] for t in times]


def test_measure_case_reports_failure_as_a_row():
    events = []
    (case,) = _logged_cases(events, ("x",), broken="x")
    row = measure_case(case, torch.device("cpu"))
    error = row.pop("error")
    assert row == dict(name="x", group="toy", amp="fp32", tag="X")
    # the first line of the message and where it was raised (here: the test's build function)
    assert error == f"RuntimeError: x: no kernel for this dtype (in build, tests/tools/{os.path.basename(__file__)})"


def _case_failing_mid_step(alive):
    """A case whose forward allocates a tensor, then raises (as an mmcv op rejecting a dtype)."""
    import weakref

    def build():
        model = nn.Linear(4, 2)

        def run():
            big = torch.ones(1024, 1024, requires_grad=True) * 2  # part of the forward's graph
            alive.append(weakref.ref(big))
            hold = [big]
            hold.append(hold)  # frames of real forwards sit in reference cycles like this one
            raise RuntimeError("expected scalar type Float but found BFloat16")
        return model, run
    return Case("failing", "toy", build)


@pytest.mark.parametrize("which", ["measure_case", "time_pass"])
def test_a_failed_step_leaves_nothing_alive(which):
    """A case that fails mid-step must not keep its partial forward alive: each bf16 detector
    rejected by mmcv's CPU ops used to keep gigabytes, which skewed the following peaks."""
    import gc
    gc.disable()  # as between the collector's runs in a long benchmark
    try:
        alive = []
        case = _case_failing_mid_step(alive)
        if which == "measure_case":
            row = measure_case(case, torch.device("cpu"))
        else:
            (row,) = time_pass([case], torch.device("cpu"), rounds=1)
        assert row["error"].startswith("RuntimeError: expected scalar type Float")
        assert alive and alive[0]() is None, "the failed step's tensors are still alive"
    finally:
        gc.enable()
