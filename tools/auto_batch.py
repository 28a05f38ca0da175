"""``tools/train.py --auto-batch``: the largest fully reversible batch that fits the card, from a memory plan.

The plan is cached per config content, card size and package version under
``$XDG_CACHE_HOME/revbifpn_mm/plans``; under a distributed launcher rank 0 plans and broadcasts the
result (docs/planner.md, ``--auto-batch``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional

import torch

import planner
import revbifpn_mm
from plan_memory import instances_to_plan
from planner import GIB

__all__ = ["AutoBatch", "AutoBatchError", "card_bytes", "plan_key", "choose_batch", "apply_auto_batch"]


class AutoBatchError(RuntimeError):
    """No batch can be chosen: the card is unknown or even batch 1 does not fit (the message says what to do)."""


@dataclass
class AutoBatch:
    """What ``--auto-batch`` chose and why."""

    batch: int
    card_gib: float
    predicted_gib: float
    """Predicted GPU memory at :attr:`batch`."""
    next_gib: float
    """Predicted GPU memory at one sample more (what does not fit)."""
    instances: int
    instances_source: str
    measured_on: str
    cached: bool = False


def card_bytes(value: str) -> float:
    """The card's memory in bytes from ``--auto-batch``: a number of GiB, or ``auto`` (this CUDA device's).

    Raises:
        AutoBatchError: ``auto`` without a CUDA device, or not a positive number.
    """
    if value == "auto":
        if not torch.cuda.is_available():
            raise AutoBatchError("--auto-batch auto reads the GPU's memory, but torch sees no CUDA device; "
                                 "give the card's memory in GiB instead, e.g. --auto-batch 12")
        return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    try:
        gib = float(value)
    except ValueError:
        gib = 0.0
    if gib <= 0:
        raise AutoBatchError(f"--auto-batch takes the card's memory in GiB (e.g. 12) or 'auto', got {value!r}")
    return gib * GIB


#: Raised when what a plan measures changes (2: boxes at the data's sizes), so older cached plans are not reused.
PLAN_INPUTS = 2


def plan_key(cfg: Any, card: float, instances: Optional[int]) -> str:
    """Hash of what the plan depends on: the model, optimizer and training data of the config (not its
    work dir, resume or logging settings), the card's size, the instance override, this package's version
    and :data:`PLAN_INPUTS`."""
    parts = {k: cfg.get(k) for k in ("model", "optim_wrapper", "train_pipeline")}
    parts["dataset"] = (cfg.get("train_dataloader") or {}).get("dataset")
    text = json.dumps(dict(parts=parts, card=round(card), instances=instances, version=revbifpn_mm.__version__,
                           inputs=PLAN_INPUTS), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _measure(config: str, cfg: Any, card: float, cfg_options: Optional[Dict], instances: Optional[int],
             log: Callable[[str], None]) -> AutoBatch:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    count, source, fmt, sides = instances_to_plan(cfg, instances)
    log(f"planning {config} for a {card / GIB:g} GiB card on {device} (fully reversible, batch 1 and 2)")
    plan = planner.make_plan(config, modes=("reversible",), device=device, cfg_options=cfg_options, log=log,
                             instances=count, instances_source=source, mask_format=fmt, box_sides=sides)
    rev = plan.reversible
    if rev is None:
        raise AutoBatchError("the plan could not measure the fully reversible step: " + "; ".join(plan.not_measured))

    def gib(b: int) -> float:
        return rev.on_gpu(b, assign_on_cpu=plan.assign_on_cpu) / GIB
    batch = rev.largest_batch(card, assign_on_cpu=plan.assign_on_cpu)
    if batch == 0:
        thr = plan.suggested_assign_thr()
        hint = (f", model.train_cfg.rpn.assigner.gpu_assign_thr={thr} (the anchor assignment of "
                f"{plan.instances} boxes sets the peak)" if thr else "")
        raise AutoBatchError(
            f"even batch 1 does not fit a {card / GIB:g} GiB card: fully reversible (plain_segments=0, the "
            f"least memory; plain_segments>0 keeps more) it needs {gib(1):.2f} GiB at {plan.shape[0]}x{plan.shape[1]}. "
            f"Train on a smaller input (the Resize scale of the training pipeline, via --cfg-options){hint}, or on "
            "a larger card")
    return AutoBatch(batch=batch, card_gib=card / GIB, predicted_gib=gib(batch), next_gib=gib(batch + 1),
                     instances=plan.instances, instances_source=source if plan.instances else "", measured_on=device)


def choose_batch(config: str, cfg: Any, card: float, cfg_options: Optional[Dict] = None,
                 instances: Optional[int] = None, log: Callable[[str], None] = print) -> AutoBatch:
    """The largest fully reversible batch for ``card`` bytes: from the cache, else measured and cached.

    Raises:
        AutoBatchError: batch 1 does not fit, or nothing could be measured.
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(root, "revbifpn_mm", "plans", f"{plan_key(cfg, card, instances)}.json")
    try:
        with open(path, encoding="utf-8") as f:
            return AutoBatch(**dict(json.load(f), cached=True))
    except (OSError, ValueError, TypeError):
        pass
    choice = _measure(config, cfg, card, cfg_options, instances, log)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(choice), f, indent=2)
    os.replace(tmp, path)  # whole or absent: a concurrent reader never sees half a file
    return choice


def _rank0_choice(cfg: Any, decide: Callable[[], Any]) -> Any:
    """``decide()`` on rank 0, its result on every rank (the process group started as the runner would
    start it, which then finds it running)."""
    launcher = cfg.get("launcher", "none")
    if launcher == "none" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return decide()
    import torch.distributed as dist
    from mmengine.dist import init_dist

    if not dist.is_initialized():  # CPU: tools/cpu_dist.py has started the gloo group already
        init_dist(launcher, **((cfg.get("env_cfg") or {}).get("dist_cfg") or {}))
    box = [None]
    if dist.get_rank() == 0:
        try:
            box = [decide()]
        except AutoBatchError as err:
            box = [err]
        except Exception as err:  # noqa: BLE001  (the other ranks wait in the broadcast: tell them too)
            box = [AutoBatchError(f"rank 0 could not plan: {type(err).__name__}: {err}")]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], AutoBatchError):
        raise box[0]
    return box[0]


def apply_auto_batch(args: Any, cfg: Any, log: Callable[[str], None] = print) -> AutoBatch:
    """Plan (rank 0, or the cache), set ``train_dataloader.batch_size`` and scale the learning rate.

    Raises:
        AutoBatchError: the card is unknown or batch 1 does not fit.
    """
    card = card_bytes(args.auto_batch)
    choice = _rank0_choice(cfg, lambda: choose_batch(
        args.config, cfg, card, args.cfg_options, getattr(args, "instances", None), log))
    before = cfg.train_dataloader.get("batch_size")
    cfg.train_dataloader.batch_size = choice.batch
    scale = cfg.get("auto_scale_lr")
    if isinstance(scale, dict) and "base_batch_size" in scale:
        cfg.auto_scale_lr.enable = True
        lr = (f"learning rate scaled by (GPUs x {choice.batch}) / base_batch_size {scale['base_batch_size']} "
              "(auto_scale_lr)")
    else:
        lr = "learning rate NOT scaled: the config has no auto_scale_lr = dict(base_batch_size=N)"
    log(f"auto-batch: batch {choice.batch} per GPU (config: {before}), the largest that fits a {choice.card_gib:g} GiB "
        f"card fully reversible: {choice.predicted_gib:.3f} GiB predicted, batch {choice.batch + 1} would need "
        f"{choice.next_gib:.3f} GiB; measured on {choice.measured_on}"
        + (f" with {choice.instances} instances per image ({choice.instances_source})" if choice.instances else "")
        + f"; {lr}" + ("; plan read from the cache" if choice.cached else ""))
    return choice
