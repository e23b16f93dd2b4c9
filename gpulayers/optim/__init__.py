"""Optimisers and learning-rate schedulers, laid out as ``torch.optim``.

- :mod:`.optimizer`: the :class:`Optimizer` base (parameter groups, ``zero_grad``, the flat
  state dict layout).
- :mod:`.sgd`, :mod:`.adam`: :class:`SGD`, :class:`Adam`, :class:`AdamW`, with PyTorch's update
  formulas step for step.
- :mod:`.lr_scheduler`: :class:`LRScheduler`, :class:`StepLR`, :class:`CosineAnnealingLR`.
"""

from .adam import Adam, AdamW
from .lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]
