"""STUB: replaced by the owner of this file."""

from .module import Module


class Linear(Module):
    pass


class Flatten(Module):
    pass


class Identity(Module):
    pass


