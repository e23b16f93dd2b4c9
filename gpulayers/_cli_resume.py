"""``--resume`` for the command line: the checkpoint checked before training, and the learning-rate
schedule fitted to a new ``--epochs``."""

from __future__ import annotations

import math

from . import optim
from .checkpoint import CheckpointError, load_checkpoint

__all__ = ["resume_problem", "stretch_schedule"]


def resume_problem(args, model, optimizer, scheduler) -> str | None:
    """Why ``--resume`` cannot continue from ``--checkpoint`` (None when it can), checked before
    training by loading the file into the freshly built objects (training loads it again)."""
    path = args.checkpoint
    try:
        state = load_checkpoint(path, restore_rng=False)
    except CheckpointError as exc:
        return f"cannot resume from {exc.path}: {exc.problem}"
    except OSError as exc:
        return f"cannot resume from {path}: {exc.strerror or exc}"
    if state["epoch"] > args.epochs:
        return (
            f"cannot resume from {path}: it holds {state['epoch']} epochs, more than --epochs {args.epochs} "
            f"(give --epochs {state['epoch']} or more)"
        )
    try:
        load_checkpoint(path, model, optimizer, scheduler, restore_rng=False)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # another model, optimiser or scheduler
        return f"cannot resume from {path}: it was written with other options ({exc})"
    return None


def stretch_schedule(scheduler, optimizer, epochs: int, state: dict) -> None:
    """Fit a resumed learning-rate schedule to ``epochs``, the total of this run.

    A cosine schedule written for another number of epochs is stretched (or shrunk) to the new
    length: the next epoch gets the learning rate that a run started with ``--epochs`` would have
    given it, and the schedule then anneals to zero at the new last epoch. A step schedule gets its
    new step size likewise.
    """
    extra = state.get("extra")
    stored_args = extra.get("args") if isinstance(extra, dict) else None
    stored = stored_args.get("epochs") if isinstance(stored_args, dict) else None
    if scheduler is None or stored == epochs:
        return
    t = scheduler.last_epoch
    if isinstance(scheduler, optim.CosineAnnealingLR):
        scheduler.T_max = epochs
        lrs = [
            scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / epochs)) / 2
            for base in scheduler.base_lrs
        ]
    elif isinstance(scheduler, optim.StepLR):
        scheduler.step_size = max(1, epochs // 3)
        lrs = [base * scheduler.gamma ** (t // scheduler.step_size) for base in scheduler.base_lrs]
    else:
        return
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    print(f"schedule: {type(scheduler).__name__} fitted to {epochs} epochs (the checkpoint was written for {stored})")
