"""Training: ``fit`` and ``evaluate``, with a progress bar and a checkpoint after every epoch.

    history = fit(model, train_loader, test_loader, criterion, optimizer, epochs=5, checkpoint="run.npz")

This module holds the training loop only: the checkpoint format lives in :mod:`gpulayers.checkpoint`
and the command line (``python -m gpulayers.train``) in :mod:`gpulayers.cli`, which imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import nn, optim
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import DistributedDataParallel, all_reduce, get_rank, get_world_size
from .grad_mode import no_grad
from .nn.module import Module

__all__ = ["StopTraining", "evaluate", "fit", "fit_sgd"]


class StopTraining(Exception):  # noqa: N818 - named after what it asks for, like StopIteration
    """Raise from ``fit``'s ``on_epoch_end`` to end training after that epoch (the history so far,
    that epoch included, is returned, and its checkpoint is kept). Returning ``False`` does the same."""


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _current_lr(optimizer: Any) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        return float(groups[0]["lr"])
    lr = getattr(optimizer, "lr", None)
    return None if lr is None else float(lr)


def evaluate(model: Module, loader: Iterable, criterion: Any = None) -> dict[str, Any]:
    """Accuracy (and mean loss with ``criterion``) of ``model`` over ``loader``, in eval mode.

    The forwards run under ``gl.no_grad()`` (nothing is kept for backward); every module's
    training flag is restored afterwards.

    Returns:
        ``{"accuracy": fraction, "loss": float or None, "count": examples}``.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    correct, loss_sum, count = None, None, 0
    try:
        with no_grad():
            for xb, yb in loader:
                logits = model(xb)
                hits = (logits.argmax(axis=1) == yb).sum()  # stays on the device
                correct = hits if correct is None else correct + hits
                if criterion is not None:
                    part = criterion(logits, yb) * len(yb)  # a 0-d array: no host read per batch
                    loss_sum = part if loss_sum is None else loss_sum + part
                count += len(yb)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    accuracy = int(correct) / count if count else 0.0
    loss = None
    if criterion is not None and count:
        loss = float(loss_sum) / count
        _check_targets(criterion, loss)
    return {"accuracy": accuracy, "loss": loss, "count": count}


def _check_targets(criterion: Any, loss: float) -> None:
    """A NaN loss on the GPU may come from out-of-range labels: let the criterion say so."""
    if loss != loss and hasattr(criterion, "check_targets"):
        criterion.check_targets()


def train_step(model: Module, criterion: Any, optimizer: Any) -> Callable[[Any, Any], tuple[Any, Any]]:
    """One training step as a function of the batch: zero_grad, forward, loss, backward, step.

    The returned ``step(x, y)`` gives ``(loss, hits)``: the loss and the number of correct
    predictions, as arrays on the batch's device (no host synchronisation), so that it can be
    wrapped by :func:`gpulayers.cuda.graphed`.
    """

    def step(xb, yb):
        optimizer.zero_grad()
        logits = model(xb)
        loss = criterion(logits, yb)
        model._backward_without_input(criterion.backward())  # the batch needs no gradient
        optimizer.step()
        return loss, (logits.argmax(axis=1) == yb).sum()

    return step


def _train_epoch(model, loader, criterion, optimizer, desc: str, progress: bool, step_fn=None):
    model.train()
    bar = _progress(loader, len(loader), desc, progress)
    correct, loss_sum, seen = None, None, 0
    start = time.perf_counter()
    step_fn = step_fn or train_step(model, criterion, optimizer)
    for step, (xb, yb) in enumerate(bar):
        loss, hits = step_fn(xb, yb)  # arrays on the device: the loss is read only when the bar refreshes
        n = len(yb)
        loss_sum = loss * n if loss_sum is None else loss_sum + loss * n
        seen += n
        correct = hits if correct is None else correct + hits
        if step % 10 == 0 and hasattr(bar, "set_postfix"):
            value = float(loss)  # the one host read per refresh
            _check_targets(criterion, value)
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:,.0f}", refresh=False)
    if hasattr(bar, "close"):
        bar.close()
    seconds = time.perf_counter() - start
    hits = 0 if correct is None else int(correct)
    loss_sum = 0.0 if loss_sum is None else float(loss_sum)  # the epoch's one read of the summed loss
    if isinstance(model, DistributedDataParallel) and get_world_size() > 1:  # every rank's share: global figures
        totals = np.array([loss_sum, hits, seen], dtype=np.float64)
        all_reduce(totals, "sum")
        loss_sum, hits, seen = float(totals[0]), int(totals[1]), int(totals[2])
    mean_loss = loss_sum / max(seen, 1)
    _check_targets(criterion, mean_loss)
    return mean_loss, (hits / seen if seen else 0.0), seen, seconds


def fit(
    model: Module,
    train_loader: Any,
    test_loader: Any,
    criterion: Any,
    optimizer: Any,
    epochs: int,
    scheduler: Any = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], Any] | None = print,
    on_epoch_end: Callable[[dict, float], Any] | None = None,
    extra: dict | None = None,
    cuda_graph: bool = False,
    on_resume: Callable[[dict], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` epochs, evaluating on ``test_loader`` after each one.

    Args:
        model, criterion, optimizer: the library's Module, loss and optimiser.
        train_loader: yields ``(x, y)`` on the model's device; with ``set_epoch`` (as
            :class:`gpulayers.data.DataLoader`) each epoch gets its own reproducible shuffle.
        test_loader: evaluated after each epoch (None to skip).
        epochs: the total number of epochs, counting those of a resumed checkpoint.
        scheduler: stepped once per epoch, after the optimiser steps.
        checkpoint: a ``.npz`` path written after every epoch (by rank 0 alone in a process group).
        resume: continue from ``checkpoint`` when the file exists (RuntimeError when it is damaged,
            not a checkpoint, or was written for another model, optimiser or scheduler).
        progress: a tqdm bar with the loss and images/s (silently off without tqdm).
        log: receives one line per epoch (None for silence).
        on_epoch_end: called with (record, seconds of training) after each epoch, once the epoch's
            checkpoint is written; returning ``False`` or raising :class:`StopTraining` ends
            training there, keeping the history.
        extra: JSON-able data stored in the checkpoint.
        cuda_graph: on the GPU, replay each training step as one CUDA graph
            (:func:`gpulayers.cuda.graphed`); where a step cannot be captured it runs eagerly
            and one line says why.
        on_resume: called with :func:`load_checkpoint`'s result after resuming, before training
            (e.g. to stretch a learning-rate schedule to a new number of epochs).

    Returns:
        The history: one dict per epoch with ``epoch``, ``lr``, ``train_loss``,
        ``train_accuracy``, ``test_loss`` and ``test_accuracy`` (fractions). It holds no
        timings, so an interrupted and resumed run gives the same history as a straight one.
        With a :class:`~gpulayers.distributed.DistributedDataParallel` model the training loss
        and accuracy count every rank's examples (the same history on every rank).
    """
    say = log or (lambda _msg: None)
    history: list[dict[str, Any]] = []
    start = 0
    if resume and checkpoint is not None:
        if Path(checkpoint).exists():
            try:
                state = load_checkpoint(checkpoint, model, optimizer, scheduler, train_loader)
            except CheckpointError as exc:  # damaged, or not a checkpoint
                raise RuntimeError(f"cannot resume from {checkpoint}: {exc.problem}") from exc
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # another model, optimiser or scheduler
                raise RuntimeError(f"cannot resume from {checkpoint}: {exc}") from exc
            history, start = list(state["history"]), int(state["epoch"])
            say(f"resumed from {checkpoint} after epoch {start}")
            if on_resume is not None:
                on_resume(state)
        else:
            say(f"no checkpoint at {checkpoint} yet; starting from scratch")
    step_fn = None
    for epoch in range(start, epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        lr = _current_lr(optimizer)
        desc = f"epoch {epoch + 1}/{epochs}"
        if cuda_graph and step_fn is None:
            step_fn = _graphed_step(model, criterion, optimizer, say)
        loss, acc, seen, seconds = _train_epoch(model, train_loader, criterion, optimizer, desc, progress, step_fn)
        result = evaluate(model, test_loader, criterion) if test_loader is not None else None
        if scheduler is not None:
            scheduler.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss,
            "train_accuracy": acc,
            "test_loss": result["loss"] if result else None,
            "test_accuracy": result["accuracy"] if result else None,
        }
        history.append(record)
        if checkpoint is not None and get_rank() == 0:  # one writer in a process group
            save_checkpoint(
                checkpoint,
                model,
                optimizer,
                scheduler,
                epoch=epoch + 1,
                history=history,
                loader=train_loader,
                extra=extra,
            )
        test_part = f"  test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.2%}" if result else ""
        say(
            f"{desc}  train loss {loss:.4f} acc {acc:.2%}{test_part}  "
            f"({seconds:.1f} s, {seen / max(seconds, 1e-9):,.0f} img/s)"
        )
        if on_epoch_end is not None:
            try:
                verdict = on_epoch_end(record, seconds)
            except StopTraining as stop:
                say(f"training stopped after epoch {epoch + 1}" + (f": {stop}" if str(stop) else ""))
                break
            if verdict is False:
                say(f"training stopped after epoch {epoch + 1}")
                break
    return history


def _graphed_step(model, criterion, optimizer, say):
    """The training step as a :class:`gpulayers.cuda.GraphedStep`, shaped like the first batch."""
    from .cuda import graphed  # noqa: PLC0415

    return graphed(train_step(model, criterion, optimizer), optimizer=optimizer, model=model, log=say)


def fit_sgd(
    model: Module,
    train_loader: Any,
    test_loader: Any,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    **fit_kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`fit` with the examples' recipe: cross-entropy loss, SGD with momentum and a cosine
    learning-rate schedule over ``epochs``.

    Args:
        model, train_loader, test_loader, epochs: as for :func:`fit`.
        lr, weight_decay, momentum: the SGD settings (``lr`` is the schedule's peak).
        **fit_kwargs: more :func:`fit` arguments (``checkpoint``, ``resume``, ``progress``, ...).

    Returns:
        :func:`fit`'s history.
    """
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = optim.CosineAnnealingLR(optimizer, T_max=epochs)
    criterion = nn.CrossEntropyLoss()
    return fit(model, train_loader, test_loader, criterion, optimizer, epochs, scheduler=scheduler, **fit_kwargs)
