"""Train the small CNN on CIFAR-10 from its python batches, with random-crop and flip augmentation.

Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it; pass the folder that
holds ``cifar-10-batches-py/``. The batches are read without executing anything from the pickles.
A GPU is strongly recommended (on a CPU, try ``--limit 2000 --epochs 2``).

    python examples/train_cifar10.py --data-dir ~/data
"""

from __future__ import annotations

import argparse
import sys

from gpulayers import data, models
from gpulayers.cli import add_run_arguments, check_run_arguments, fit_options, prepare_run
from gpulayers.train import DEFAULTS, fit_sgd

TUNED = DEFAULTS["cifar10"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--epochs", type=int, default=TUNED["epochs"])
    parser.add_argument("--batch-size", type=int, default=TUNED["batch_size"])
    parser.add_argument("--lr", type=float, default=TUNED["lr"])
    parser.add_argument("--width", type=int, default=TUNED["width"])
    parser.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    add_run_arguments(parser)  # --limit, --device, --seed, --checkpoint, --resume, --no-progress
    args = parser.parse_args(argv)
    if problem := check_run_arguments(args):
        parser.error(problem)

    try:  # a clear message when the files are missing or damaged
        train_set, test_set, device = prepare_run("cifar10", args)
    except data.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = (train_set.mean, train_set.std)  # the usual CIFAR-10 channel statistics
    augment = None if args.no_augment else data.cifar10_augment()  # pad 4 + random 32x32 crop, flip
    train_loader = data.DataLoader(
        train_set, args.batch_size, shuffle=True, seed=args.seed, device=device, normalize=stats, augment=augment
    )
    test_loader = data.DataLoader(test_set, 1000, device=device, normalize=stats)

    model = models.small_cnn(in_channels=3, num_classes=10, image_size=32, width=args.width).to(device)
    # cross-entropy, SGD with momentum 0.9 and a cosine learning-rate schedule
    history = fit_sgd(
        model, train_loader, test_loader, args.epochs, args.lr, TUNED["weight_decay"], **fit_options(args)
    )
    print(f"CIFAR-10 test accuracy: {history[-1]['test_accuracy']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
