"""STUB: replaced by the owner of this file."""

from .module import Module


class CrossEntropyLoss(Module):
    pass


class MSELoss(Module):
    pass


