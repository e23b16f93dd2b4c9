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

from . import _cli_checks as ck
from . import backend, data, distributed, models, nn, optim
from ._cli_log import EpochLog, best_epoch
from ._cli_resume import resume_problem, stretch_schedule
from .checkpoint import write_text_atomic
from .distributed import launch
from .plotting import require_matplotlib, save_plot
from .training import fit

__all__ = [
    "DEFAULTS",
    "add_run_arguments",
    "augment_for",
    "build_parser",
    "check_run_arguments",
    "choose_device",
    "fit_options",
    "main",
    "prepare_run",
    "save_plot",
]

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
    p.add_argument(
        "--model",
        default="small-cnn",
        choices=list(models.MODELS),
        help="small-cnn (default; --width, --dropout) or resnet20 (He et al.'s CIFAR ResNet-20)",
    )
    p.add_argument("--epochs", type=ck.epochs_int, help="epochs (default: per data set, 20 for digits)")
    p.add_argument("--batch-size", type=ck.positive_int, help="batch size (default: per data set, 32 for digits)")
    p.add_argument("--lr", type=ck.positive_float, help="peak learning rate (default: per data set, 0.05 for SGD)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--momentum", type=ck.non_negative_float, help="SGD momentum (default 0.9; SGD only)")
    p.add_argument("--weight-decay", type=ck.non_negative_float, help="weight decay (default: per data set, 5e-4)")
    p.add_argument("--scheduler", default="cosine", choices=["none", "step", "cosine"], help="per-epoch LR schedule")
    p.add_argument(
        "--width", type=ck.width_int, help="channels of the first convolution (default: 16 digits, 32 others)"
    )
    p.add_argument("--dropout", type=ck.drop_probability, default=0.5, help="dropout probability in [0, 1)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random shifts (and flips for CIFAR-10) chosen per data set (default: on for CIFAR-10 only)",
    )
    add_run_arguments(p)
    p.add_argument("--metrics-json", help="write the history and final accuracy as JSON")
    p.add_argument("--plot", help="save loss, accuracy and learning-rate curves as a PNG (needs matplotlib)")
    p.add_argument("--log-csv", help="write one CSV row per epoch (rewritten after every epoch)")
    p.add_argument(
        "--early-stop",
        type=ck.positive_int,
        metavar="PATIENCE",
        help="stop when the test loss has not improved for PATIENCE epochs",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one rank of an MPI job: mpiexec -n K python -m gpulayers.train --distributed (batch size per rank)",
    )
    p.add_argument("--num-threads", type=ck.positive_int, help="BLAS threads on the CPU (needs threadpoolctl)")
    return p


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options every training script shares to ``parser`` and return it.

    ``--limit N``, ``--device`` (default auto), ``--seed`` (default 0), ``--checkpoint PATH``,
    ``--resume`` and ``--no-progress``; :func:`fit_options` turns the last three into ``fit`` arguments
    and :func:`check_run_arguments` checks them before anything runs.
    """
    parser.add_argument(
        "--limit", type=ck.positive_int, help="use only the first N training and test examples (quick runs)"
    )
    parser.add_argument(
        "--device", type=ck.device_name, default="auto", help="auto, cpu, cuda or cuda:N (default auto)"
    )
    parser.add_argument(
        "--seed", type=ck.seed_int, default=0, help="seeds initialisation, dropout and shuffling (default 0)"
    )
    parser.add_argument("--checkpoint", help="write a checkpoint .npz after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_run_arguments(args: argparse.Namespace) -> str | None:
    """The first problem with the options of :func:`add_run_arguments` (None when there is none).

    ``--resume`` needs ``--checkpoint``, and the checkpoint must be a writable file path.
    """
    if args.resume and not args.checkpoint:
        return "--resume needs --checkpoint PATH (the file to continue from)"
    if args.checkpoint:
        return ck.output_path_problem("--checkpoint", args.checkpoint)
    return None


def fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """``checkpoint``, ``resume`` and ``progress`` for :func:`gpulayers.training.fit`, from the
    options of :func:`add_run_arguments`."""
    return {"checkpoint": args.checkpoint, "resume": args.resume, "progress": not args.no_progress}


def choose_device(requested: str) -> tuple[str, str]:
    """The device to train on and why it was chosen (RuntimeError when CUDA is asked for but unusable).

    The reason is said plainly ("no NVIDIA driver or GPU found"); ``python -m gpulayers.info`` shows
    CuPy's own words.
    """
    requested = requested.strip().lower()
    if requested == "auto":
        forced = os.environ.get("GPULAYERS_DEVICE", "").strip()
        if forced:
            return backend.default_device(), f"GPULAYERS_DEVICE={forced}"
        if backend.cuda_is_available():
            return "cuda", _gpu_name()
        return "cpu", f"CUDA not usable: {plain_cuda_reason()}"
    kind, _ = backend.parse_device(requested)
    if kind == "cuda":
        if not backend.cuda_is_available():
            raise RuntimeError(f"--device {requested}: CUDA is not usable: {plain_cuda_reason()}")
        return requested, f"asked for; {_gpu_name()}"
    return "cpu", "asked for"


_NO_DRIVER_MARKS = (
    "InsufficientDriver",
    "NoDevice",
    "no CUDA device",
    "device count is 0",
    "libcuda",
    "InitializationError",
    "StubLibrary",
)


def prepare_run(dataset: str, args: argparse.Namespace) -> tuple[Any, Any, str]:
    """``(train_set, test_set, device)`` for a training script's run: the data set loaded from
    ``args.data_dir`` and cut to ``args.limit``, the device chosen from ``args.device`` (printed with
    the reason), the generators seeded with ``args.seed``. Raises :class:`gpulayers.data.DatasetError`
    when the files are missing or damaged."""
    train_set, test_set = data.load_dataset(dataset, args.data_dir)
    device, why = choose_device(args.device)
    print(f"device: {device} ({why})")
    backend.manual_seed(args.seed)
    return train_set.subset(args.limit), test_set.subset(args.limit), device


def plain_cuda_reason() -> str:
    """Why CUDA is not usable, in a user's words (the details stay in ``python -m gpulayers.info``)."""
    reason = backend.cuda_unavailable_reason()
    if reason.startswith("CuPy is not installed"):
        return 'CuPy is not installed (pip install "gpulayers[cuda13]" on a machine with an NVIDIA GPU)'
    if any(mark in reason for mark in _NO_DRIVER_MARKS):
        return "no NVIDIA driver or GPU found (python -m gpulayers.info shows the details)"
    return reason


def _gpu_name() -> str:
    try:
        import cupy  # noqa: PLC0415

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # the name is decoration only
        return f"GPU name unavailable ({type(exc).__name__})"


def augment_for(dataset: str, size: int):
    """The ``--augment`` recipe of a data set: random shifts of about an eighth of the image (1 pixel
    on digits' 8x8, 3 on MNIST's 28x28, 4 on CIFAR-10's 32x32), plus horizontal flips on CIFAR-10 only
    (a flipped digit is another glyph or none)."""
    padding = max(1, size // 8)
    if dataset == "cifar10":
        return data.Compose([data.RandomCrop(size, padding), data.RandomHorizontalFlip()])
    return data.RandomCrop(size, padding)


def _check_plot_format(path: str) -> None:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    suffix = Path(path).suffix.lower().lstrip(".")
    formats = FigureCanvasAgg.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise ValueError(f"--plot {path}: matplotlib cannot write .{suffix} files (use one of {', '.join(formats)})")


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


def _error(parser: argparse.ArgumentParser, message: str) -> int:
    """Print ``message`` as argparse does (usage, then ``prog: error: ...``); return exit status 2."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def _argument_problem(args: argparse.Namespace) -> str | None:
    """The first problem among options that are each valid alone (None when they fit together)."""
    if args.data_dir is not None and args.data == "digits":
        return "--data-dir is for mnist, fashion-mnist and cifar10; the digits come with scikit-learn"
    if args.momentum is not None and args.optimizer != "sgd":
        return f"--momentum is for --optimizer sgd, not {args.optimizer}"
    problem = check_run_arguments(args)
    if problem:
        return problem
    outputs = {
        "--checkpoint": args.checkpoint,
        "--metrics-json": args.metrics_json,
        "--plot": args.plot,
        "--log-csv": args.log_csv,
    }
    seen: dict[Path, str] = {}
    for option, value in outputs.items():
        if not value:
            continue
        problem = ck.output_path_problem(option, value)
        if problem:
            return problem
        key = Path(value).expanduser().resolve()
        if key in seen:
            return f"{seen[key]} and {option} name the same file {value}"
        seen[key] = option
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad arguments or data, 1 other errors,
    130 interrupted with Ctrl-C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the help or the error line
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(parser, args)
    except KeyboardInterrupt:
        kept = ""
        if args.checkpoint and Path(args.checkpoint).is_file():
            kept = f"; the last checkpoint is kept in {args.checkpoint} (add --resume to continue)"
        print(f"\ninterrupted{kept}", file=sys.stderr)
        return 130


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    wall_start = time.perf_counter()
    for key, value in DEFAULTS[args.data].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problem = _argument_problem(args)
    if problem:
        return _error(parser, problem)
    if args.momentum is None:
        args.momentum = 0.9
    if args.distributed:
        return launch.run(lambda a: _train(parser, a, wall_start), args)
    return _train(parser, args, wall_start)


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace, wall_start: float) -> int:
    try:
        if args.plot:
            _check_plot_format(args.plot)  # fail before training, not after
        device, why = choose_device(args.device)
        train_set, test_set = data.load_dataset(args.data, args.data_dir)
    except (ValueError, ImportError, RuntimeError, OSError) as exc:
        return _error(parser, str(exc))
    limiter = _limit_threads(args.num_threads)
    backend.manual_seed(args.seed)
    train_set, test_set = train_set.subset(args.limit), test_set.subset(args.limit)
    channels, size = train_set.x.shape[1], train_set.x.shape[2]
    if args.model == "resnet20":
        model = models.resnet20(num_classes=10, in_channels=channels).to(device)
    else:
        model = models.small_cnn(channels, 10, size, width=args.width, dropout=args.dropout).to(device)
    if args.distributed:  # rank 0's initial weights on every rank, gradients averaged after backward
        model = distributed.DistributedDataParallel(model)
    stats = (train_set.mean, train_set.std)
    augment = augment_for(args.data, size) if args.augment else None
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
    if args.resume and Path(args.checkpoint).exists():
        problem = resume_problem(args, model, optimizer, scheduler)
        if problem:
            return _error(parser, problem)
    n_params = sum(p.size for p in model.parameters())
    print(f"device: {device} ({why})")
    if args.checkpoint and not args.resume and Path(args.checkpoint).expanduser().is_file():
        print(f"note: {args.checkpoint} exists and will be replaced after epoch 1 (--resume continues from it)")
    print(f"data: {args.data}: {len(train_set)} train / {len(test_set)} test images of {channels}x{size}x{size}")
    print(
        f"model: {args.model}{f' width {args.width}' if args.model == 'small-cnn' else ''}, {n_params:,} parameters; "
        f"{args.optimizer} lr {args.lr} "
        f"wd {args.weight_decay}, {args.scheduler} schedule, batch {args.batch_size}, {args.epochs} epochs"
    )
    epoch_log = EpochLog(args.log_csv, args.early_stop)

    def resumed(state: dict) -> None:
        stretch_schedule(scheduler, optimizer, args.epochs, state)
        epoch_log.resumed(state)

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
            on_epoch_end=epoch_log,
            extra={"args": vars(args)},
            on_resume=resumed,
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
    epoch_seconds = epoch_log.epoch_seconds
    if args.metrics_json:
        metrics = {
            "history": history,
            "test_accuracy": final,
            "best_test_accuracy": max((r["test_accuracy"] or 0.0 for r in history), default=None),
            "best_epoch": best_epoch(history),
            "stopped_early": epoch_log.stopped_early,
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
        write_text_atomic(args.metrics_json, json.dumps(metrics, indent=2))
    if args.plot:
        save_plot(history, args.plot, f"{args.model} on {args.data} ({device})")
        print(f"curves saved to {args.plot}")
    return 0
