"""Train ResNet-20 (He et al., 2016) on CIFAR-10 from its python batches, with crop and flip augmentation.

Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it; pass the folder that
holds ``cifar-10-batches-py/``. The model is ``gl.models.resnet20()``: three stages of residual
blocks built from ``nn.Residual``. The recipe is SGD with momentum 0.9, weight decay 5e-4 and a cosine
schedule from lr 0.1. A GPU is strongly recommended; ``--smoke`` runs one epoch on a few synthetic
images instead (a check that everything is wired, in seconds on a CPU).

    python examples/train_resnet_cifar10.py --data-dir ~/data --epochs 30
    python examples/train_resnet_cifar10.py --smoke
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import gpulayers as gl
from gpulayers import data, models
from gpulayers.cli import add_run_arguments, fit_options
from gpulayers.train import choose_device, fit_sgd


def synthetic_cifar(n_train: int = 16, n_test: int = 8, seed: int = 0):
    """Random uint8 images of CIFAR-10's shape (N, 3, 32, 32) and labels, as ArrayDatasets."""
    rng = np.random.default_rng(seed)

    def make(n: int, name: str) -> data.ArrayDataset:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        return data.ArrayDataset(x, y, name=name, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    return make(n_train, "synthetic-train"), make(n_test, "synthetic-test")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    source.add_argument("--smoke", action="store_true", help="one epoch on 16 synthetic images")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    add_run_arguments(parser)  # --limit, --device, --seed, --checkpoint, --resume, --no-progress
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be >= 1 and --lr > 0")

    if args.smoke:
        train_set, test_set = synthetic_cifar(seed=args.seed)
        args.epochs, args.batch_size = 1, min(args.batch_size, 8)
    else:
        try:  # a clear message when the files are missing or damaged
            train_set, test_set = data.load_cifar10(args.data_dir)
        except data.DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        device, why = choose_device(args.device)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"device: {device} ({why})")
    gl.manual_seed(args.seed)

    train_set, test_set = train_set.subset(args.limit), test_set.subset(args.limit)
    stats = (train_set.mean, train_set.std)
    augment = None if args.no_augment else data.cifar10_augment()  # pad 4 + random 32x32 crop, flip
    train_loader = data.DataLoader(
        train_set, args.batch_size, shuffle=True, seed=args.seed, device=device, normalize=stats, augment=augment
    )
    test_loader = data.DataLoader(test_set, 500, device=device, normalize=stats)

    model = models.resnet20(num_classes=10, in_channels=3).to(device)
    n_params = sum(p.size for p in model.parameters())
    print(f"model: ResNet-20, {n_params:,} parameters; {len(train_set)} train / {len(test_set)} test images")
    history = fit_sgd(model, train_loader, test_loader, args.epochs, args.lr, args.weight_decay, **fit_options(args))
    print(f"CIFAR-10 test accuracy: {history[-1]['test_accuracy']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
