"""STUB: replaced by the owner of this file."""

from .module import Module


class BatchNorm1d(Module):
    pass


class BatchNorm2d(Module):
    pass


