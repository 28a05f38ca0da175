"""Training-memory planner: will a detection or segmentation config fit on a GPU, and how to train it.

Backs ``tools/plan_memory.py`` (method, allowance and checks: ``docs/planner.md``). Modules: ``config``
(the config, its errors), ``inputs`` (the batch measured), ``measure`` (one measurement, in a fresh
process), ``predict`` (the prediction model, pure arithmetic), ``run`` (which measurements a plan
takes), ``render`` (the plan as text).
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
