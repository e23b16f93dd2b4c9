"""The command line of ``python -m gpulayers.train`` (also the ``gpulayers-train`` script).

    python -m gpulayers.train                       # small CNN on scikit-learn's digits, CPU or GPU
    python -m gpulayers.train --data mnist --data-dir ~/data/mnist --epochs 5 --plot curves.png

:mod:`gpulayers.train` is the ``python -m`` entry and re-exports :func:`main` and the other public
names here; the training loop itself lives in :mod:`gpulayers.training`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import backend, data, distributed, models, nn, optim
from .distributed import launch
from .training import fit

__all__ = ["DEFAULTS", "add_run_arguments", "build_parser", "choose_device", "fit_options", "main", "save_plot"]

#: Per data set defaults (tuned on a 2-core CPU for digits: >= 97 % test accuracy well within a minute).
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 20, "batch_size": 32, "lr": 0.05, "width": 16, "weight_decay": 5e-4, "augment": False},
    "mnist": {"epochs": 5, "batch_size": 128, "lr": 0.05, "width": 32, "weight_decay": 5e-4, "augment": False},
    "fashion-mnist": {"epochs": 10, "batch_size": 128, "lr": 0.05, "width": 32, "weight_decay": 5e-4, "augment": False},
    "cifar10": {"epochs": 30, "batch_size": 128, "lr": 0.05, "width": 32, "weight_decay": 5e-4, "augment": True},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpulayers.train",
        description="Train a small CNN with gpulayers (NumPy on the CPU, CuPy on an NVIDIA GPU).",
    )
    p.add_argument("--data", default="digits", choices=list(DEFAULTS), help="data set (default: digits, no download)")
    p.add_argument("--data-dir", help="folder with the MNIST/Fashion-MNIST IDX files or cifar-10-batches-py")
    p.add_argument("--model", default="small-cnn", choices=["small-cnn"])
    p.add_argument("--epochs", type=int, help="epochs (default: per data set, 20 for digits)")
    p.add_argument("--batch-size", type=int, help="batch size (default: per data set, 32 for digits)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: per data set, 0.05 for SGD)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (default: per data set, 5e-4)")
    p.add_argument("--scheduler", default="cosine", choices=["none", "step", "cosine"], help="per-epoch LR schedule")
    p.add_argument("--width", type=int, help="channels of the first convolution (default: 16 digits, 32 others)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="crop+flip (CIFAR default)")
    add_run_arguments(p)
    p.add_argument("--metrics-json", help="write the history and final accuracy as JSON")
    p.add_argument("--plot", help="save loss and accuracy curves as a PNG (needs matplotlib)")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one rank of an MPI job: mpiexec -n K python -m gpulayers.train --distributed (batch size per rank)",
    )
    p.add_argument("--num-threads", type=int, help="BLAS threads on the CPU (needs threadpoolctl)")
    return p


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options every training script shares to ``parser`` and return it.

    ``--limit N``, ``--device`` (default auto), ``--seed`` (default 0), ``--checkpoint PATH``,
    ``--resume`` and ``--no-progress``; :func:`fit_options` turns the last three into ``fit`` arguments.
    """
    parser.add_argument("--limit", type=int, help="use only the first N training and test examples (quick runs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, dropout and shuffling (default 0)")
    parser.add_argument("--checkpoint", help="write a checkpoint .npz after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """``checkpoint``, ``resume`` and ``progress`` for :func:`gpulayers.training.fit`, from the
    options of :func:`add_run_arguments`."""
    return {"checkpoint": args.checkpoint, "resume": args.resume, "progress": not args.no_progress}


def choose_device(requested: str) -> tuple[str, str]:
    """The device to train on and why it was chosen (RuntimeError when CUDA is asked for but unusable)."""
    requested = requested.strip().lower()
    if requested == "auto":
        forced = os.environ.get("GPULAYERS_DEVICE", "").strip()
        if forced:
            return backend.default_device(), f"GPULAYERS_DEVICE={forced}"
        if backend.cuda_is_available():
            return "cuda", _gpu_name()
        return "cpu", f"CUDA not usable: {backend.cuda_unavailable_reason()}"
    kind, _ = backend.parse_device(requested)
    if kind == "cuda":
        if not backend.cuda_is_available():
            raise RuntimeError(f"--device {requested}: CUDA is not usable: {backend.cuda_unavailable_reason()}")
        return requested, f"asked for; {_gpu_name()}"
    return "cpu", "asked for"


def _gpu_name() -> str:
    try:
        import cupy  # noqa: PLC0415

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # the name is decoration only
        return f"GPU name unavailable ({type(exc).__name__})"


def _require_matplotlib():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f'--plot needs matplotlib ({exc}): pip install "gpulayers[train]"') from exc
    return plt


def save_plot(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and accuracy curves per epoch, as a PNG."""
    plt = _require_matplotlib()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    if any(r["test_accuracy"] is not None for r in history):
        ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
        ax_acc.plot(epochs, [r["test_accuracy"] for r in history], "s-", label="test")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _make_optimizer(args, params):
    if args.optimizer == "sgd":
        return optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    cls = optim.Adam if args.optimizer == "adam" else optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def _make_scheduler(args, optimizer):
    if args.scheduler == "step":
        return optim.StepLR(optimizer, step_size=max(1, args.epochs // 3), gamma=0.1)
    if args.scheduler == "cosine":
        return optim.CosineAnnealingLR(optimizer, T_max=args.epochs)
    return None


def _limit_threads(n: int | None):
    if n is None:
        return None
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        print("warning: --num-threads needs threadpoolctl (pip install threadpoolctl); ignored", file=sys.stderr)
        return None
    return threadpool_limits(limits=n)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad arguments or data, 1 other errors)."""
    wall_start = time.perf_counter()
    args = build_parser().parse_args(argv)
    for key, value in DEFAULTS[args.data].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.distributed:
        return launch.run(lambda a: _train(a, wall_start), args)
    return _train(args, wall_start)


def _train(args: argparse.Namespace, wall_start: float) -> int:
    try:
        if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
            raise ValueError("--epochs and --batch-size must be >= 1 and --lr > 0")
        if args.plot:
            _require_matplotlib()  # fail before training, not after
        device, why = choose_device(args.device)
        train_set, test_set = data.load_dataset(args.data, args.data_dir)
    except (ValueError, ImportError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limiter = _limit_threads(args.num_threads)
    backend.manual_seed(args.seed)
    train_set, test_set = train_set.subset(args.limit), test_set.subset(args.limit)
    channels, size = train_set.x.shape[1], train_set.x.shape[2]
    model = models.small_cnn(channels, 10, size, width=args.width, dropout=args.dropout).to(device)
    if args.distributed:  # rank 0's initial weights on every rank, gradients averaged after backward
        model = distributed.DistributedDataParallel(model)
    stats = (train_set.mean, train_set.std)
    augment = data.cifar10_augment(size, 4) if args.augment else None
    train_loader = data.DataLoader(
        train_set,
        args.batch_size,
        shuffle=not args.distributed,
        sampler=data.DistributedSampler(train_set, seed=args.seed) if args.distributed else None,
        seed=args.seed,
        device=device,
        normalize=stats,
        augment=augment,
    )
    test_loader = data.DataLoader(test_set, max(256, args.batch_size), device=device, normalize=stats)
    criterion = nn.CrossEntropyLoss()
    optimizer = _make_optimizer(args, model.parameters())
    scheduler = _make_scheduler(args, optimizer)
    n_params = sum(p.size for p in model.parameters())
    print(f"device: {device} ({why})")
    print(f"data: {args.data}: {len(train_set)} train / {len(test_set)} test images of {channels}x{size}x{size}")
    print(
        f"model: {args.model} width {args.width}, {n_params:,} parameters; {args.optimizer} lr {args.lr} "
        f"wd {args.weight_decay}, {args.scheduler} schedule, batch {args.batch_size}, {args.epochs} epochs"
    )
    epoch_seconds: list[float] = []
    try:
        history = fit(
            model,
            train_loader,
            test_loader,
            criterion,
            optimizer,
            args.epochs,
            scheduler=scheduler,
            **fit_options(args),
            on_epoch_end=lambda _record, seconds: epoch_seconds.append(seconds),
            extra={"args": vars(args)},
        )
    except (RuntimeError, ValueError) as exc:  # e.g. a checkpoint from another model
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if limiter is not None:
            limiter.unregister()
    final = history[-1]["test_accuracy"] if history else None
    wall = time.perf_counter() - wall_start
    acc_text = "n/a" if final is None else f"{final:.2%}"
    print(f"final test accuracy: {acc_text} ({len(test_set)} images); wall time {wall:.1f} s")
    if args.metrics_json:
        metrics = {
            "history": history,
            "test_accuracy": final,
            "best_test_accuracy": max((r["test_accuracy"] or 0.0 for r in history), default=None),
            "data": args.data,
            "model": args.model,
            "parameters": int(n_params),
            "device": device,
            "device_reason": why,
            "epoch_seconds": epoch_seconds,
            "train_seconds": sum(epoch_seconds),
            "wall_time_s": wall,
            "args": vars(args),
        }
        Path(args.metrics_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics_json).write_text(json.dumps(metrics, indent=2))
    if args.plot:
        save_plot(history, args.plot, f"{args.model} on {args.data} ({device})")
        print(f"curves saved to {args.plot}")
    return 0
