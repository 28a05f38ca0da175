"""Training-memory planner: will a detection or segmentation config fit on a GPU, and how to train it.

Backs ``tools/plan_memory.py``; the method, its allowance and its checks are in ``docs/planner.md``.
It measures rather than guesses: the config's real model and optimizer run short training steps on
synthetic inputs of the training resolution, each measurement in a fresh process, and the
prediction model extrapolates linearly in the batch. One module per concern:

* :mod:`planner.config`: loading the config, its training resolution and batch, its model built
  for measuring; the errors (:class:`PlanError`, :class:`NotMeasured`).
* :mod:`planner.inputs`: the synthetic training batch (one place for what the inputs hold).
* :mod:`planner.measure`: one measurement (:func:`probe`), in a fresh process
  (:func:`probe_in_subprocess`, through ``meters.run_fresh``) under an address-space limit.
* :mod:`planner.predict`: :class:`Probe`, :class:`ModePlan`, :class:`Plan`, the allowance: pure arithmetic.
* :mod:`planner.run`: which measurements a plan takes (:func:`make_plan`) and about how long.
* :mod:`planner.render`: the plan as text, with the command to train with per card.
"""
from .config import NotMeasured, PlanError, load_config, training_pipeline, training_shape
from .inputs import BOXES_PER_IMAGE
from .measure import available_ram_bytes, probe, probe_in_subprocess
from .predict import ALLOWANCE_TEXT, BATCHES, CONTEXT_GIB, FRAGMENTATION, GIB, ModePlan, Plan, Probe
from .render import render_plan, train_command
from .run import MODES, expected_seconds, make_plan

__all__ = ["PlanError", "NotMeasured", "Probe", "ModePlan", "Plan", "CONTEXT_GIB", "FRAGMENTATION", "GIB",
           "ALLOWANCE_TEXT", "BATCHES", "BOXES_PER_IMAGE", "MODES", "load_config", "training_pipeline",
           "training_shape", "probe", "probe_in_subprocess", "make_plan", "render_plan", "train_command",
           "available_ram_bytes", "expected_seconds"]
