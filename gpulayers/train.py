"""``python -m gpulayers.train``: the command line of :mod:`gpulayers.cli`, and one import for scripts.

    python -m gpulayers.train                       # small CNN on scikit-learn's digits, CPU or GPU
    python -m gpulayers.train --data mnist --data-dir ~/data/mnist --epochs 5 --plot curves.png

Re-exports the training loop (:mod:`gpulayers.training`), the checkpoint functions
(:mod:`gpulayers.checkpoint`) and the command line's helpers (:mod:`gpulayers.cli`); the code lives
in those modules, none of which imports this one.
"""

from __future__ import annotations

from .checkpoint import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from .checkpoint import load_checkpoint, save_checkpoint
from .cli import DEFAULTS as DEFAULTS
from .cli import add_run_arguments, build_parser, choose_device, fit_options, main, save_plot
from .training import StopTraining, evaluate, fit, fit_sgd

__all__ = [
    "StopTraining",
    "fit",
    "fit_sgd",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "save_plot",
    "main",
    "build_parser",
    "choose_device",
    "add_run_arguments",
    "fit_options",
]

if __name__ == "__main__":
    raise SystemExit(main())
