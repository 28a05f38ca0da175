"""Where the time of one detector training step goes: backbone, neck and heads, forward and backward.

Torch only; the detector is any module with ``backbone`` and ``neck`` children and a
``loss(inputs, data_samples)`` method (mmdet's two-stage detectors). Hooks time the phases
of one step ``training_loss(model.loss(...)).backward()`` with wall-clock marks:

* forward: backbone and neck by forward pre/post hooks; heads (RPN, RoI, losses) = the
  rest of the forward;
* backward: the autograd engine runs the heads first, then the neck, then the backbone
  (each needs the gradients of the next). Gradient hooks on the neck's and the backbone's
  outputs mark when the last of their gradients arrives: heads = backward start to the
  neck's outputs' last gradient; neck = from there to the backbone's outputs' last
  gradient; backbone = from there to the end of ``backward()``.

For a reversible backbone the backbone's backward contains the recomputation; comparing it
with the same backbone in ``memory_mode='plain'`` separates the two.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Sequence

import torch
from torch import nn

from bench.measure import training_loss

__all__ = ["PHASES", "time_phases", "interleaved_phases"]

PHASES = ("backbone_fwd", "neck_fwd", "heads_fwd", "heads_bwd", "neck_bwd", "backbone_bwd", "step")


def _tensors(out: Any) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def time_phases(model: nn.Module, run: Callable[[], Any],
                clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Seconds spent in each phase of one training step (see the module docstring).

    Args:
        model: the detector (must have ``backbone`` and ``neck`` children).
        run: computes the detector's loss dict (e.g. ``lambda: model.loss(inputs, samples)``).
        clock: the time source.

    Returns:
        ``{phase: seconds}`` for :data:`PHASES`; the phases add up to ``step``.
    """
    marks: Dict[str, float] = {}
    grads_seen: Dict[str, float] = {}

    def pre(name: str):
        def hook(mod: nn.Module, args: Any) -> None:
            marks[name + "_start"] = clock()
        return hook

    def post(name: str):
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            marks[name + "_end"] = clock()
            for t in _tensors(out):
                if t.requires_grad:
                    t.register_hook(lambda g, n=name: grads_seen.__setitem__(n, clock()))
        return hook

    handles = []
    for name in ("backbone", "neck"):
        mod = getattr(model, name)
        handles += [mod.register_forward_pre_hook(pre(name)), mod.register_forward_hook(post(name))]
    try:
        t0 = clock()
        loss = training_loss(run())
        t1 = clock()
        loss.backward()
        t2 = clock()
    finally:
        for h in handles:
            h.remove()
    res = {
        "backbone_fwd": marks["backbone_end"] - marks["backbone_start"],
        "neck_fwd": marks["neck_end"] - marks["neck_start"],
        "heads_bwd": grads_seen["neck"] - t1,
        "neck_bwd": grads_seen["backbone"] - grads_seen["neck"],
        "backbone_bwd": t2 - grads_seen["backbone"],
        "step": t2 - t0,
    }
    res["heads_fwd"] = (t1 - t0) - res["backbone_fwd"] - res["neck_fwd"]
    return {k: res[k] for k in PHASES}


def interleaved_phases(models: Mapping[str, Sequence[Any]], rounds: int = 3) -> Dict[str, Dict[str, float]]:
    """:func:`time_phases` of several detectors, stepped in turn for ``rounds`` rounds.

    Args:
        models: name -> ``(model, run)``; each is warmed up with one untimed step first.
        rounds: timed rounds; the round with the shortest whole step is kept per model.

    Returns:
        name -> phases of that model's fastest step.
    """
    for model, run in models.values():
        training_loss(run()).backward()
        model.zero_grad(set_to_none=True)
    best: Dict[str, Dict[str, float]] = {}
    for _ in range(rounds):
        for name, (model, run) in models.items():
            res = time_phases(model, run)
            model.zero_grad(set_to_none=True)
            if name not in best or res["step"] < best[name]["step"]:
                best[name] = res
    return best
