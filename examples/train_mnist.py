"""Train the small CNN on MNIST (or Fashion-MNIST) from the original IDX files in a folder.

Download the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into one folder, gzipped or not; nothing is
downloaded for you.

    python examples/train_mnist.py --data-dir ~/data/mnist
    python examples/train_mnist.py --data-dir ~/data/fashion --fashion --epochs 10
"""

from __future__ import annotations

import argparse
import sys

from gpulayers import data, models
from gpulayers.cli import add_run_arguments, check_run_arguments, fit_options, prepare_run
from gpulayers.train import DEFAULTS, fit_sgd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding the four IDX files")
    parser.add_argument("--fashion", action="store_true", help="the files are Fashion-MNIST's")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    add_run_arguments(parser)  # --limit, --device, --seed, --checkpoint, --resume, --no-progress
    args = parser.parse_args(argv)
    if problem := check_run_arguments(args):
        parser.error(problem)
    name = "fashion-mnist" if args.fashion else "mnist"
    tuned = DEFAULTS[name]

    try:  # a clear message when the files are missing or damaged
        train_set, test_set, device = prepare_run(name, args)
    except data.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uint8 (N, 1, 28, 28); the loader scales to [0, 1] and normalises on the device
    stats = (train_set.mean, train_set.std)
    batch_size = args.batch_size or tuned["batch_size"]
    train_loader = data.DataLoader(train_set, batch_size, shuffle=True, seed=args.seed, device=device, normalize=stats)
    test_loader = data.DataLoader(test_set, 1000, device=device, normalize=stats)

    model = models.small_cnn(in_channels=1, num_classes=10, image_size=28, width=tuned["width"]).to(device)
    # cross-entropy, SGD with momentum 0.9 and a cosine learning-rate schedule
    epochs, lr = args.epochs or tuned["epochs"], args.lr or tuned["lr"]
    history = fit_sgd(model, train_loader, test_loader, epochs, lr, tuned["weight_decay"], **fit_options(args))
    print(f"{name} test accuracy: {history[-1]['test_accuracy']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
