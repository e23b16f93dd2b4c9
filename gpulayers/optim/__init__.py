"""Optimisers and learning-rate schedulers, laid out as ``torch.optim``.

- :mod:`.optimizer`: the :class:`Optimizer` base (parameter groups, ``zero_grad``, the flat
  state dict layout).
- :mod:`.sgd`, :mod:`.adam`, :mod:`.rmsprop`: :class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`RMSprop`,
  with PyTorch's update formulas step for step.
- :mod:`.lr_scheduler`: :class:`LRScheduler`, :class:`StepLR`, :class:`CosineAnnealingLR`, :class:`LinearLR`,
  :class:`OneCycleLR`.
"""

from . import lr_scheduler
from .adam import Adam, AdamW
from .lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, StepLR
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "LRScheduler",
    "StepLR",
    "CosineAnnealingLR",
    "LinearLR",
    "OneCycleLR",
    "lr_scheduler",
]
