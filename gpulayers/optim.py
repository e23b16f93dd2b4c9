"""STUB: replaced by the owner of this file."""

class Optimizer(object):
    pass


class SGD(object):
    pass


class Adam(object):
    pass


class AdamW(object):
    pass


class LRScheduler(object):
    pass


class StepLR(object):
    pass


class CosineAnnealingLR(object):
    pass


