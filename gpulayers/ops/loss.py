"""STUB: replaced by the owner of this file."""

def cross_entropy_forward(*args, **kwargs):
    raise NotImplementedError('cross_entropy_forward')


def cross_entropy_backward(*args, **kwargs):
    raise NotImplementedError('cross_entropy_backward')


def mse_loss_forward(*args, **kwargs):
    raise NotImplementedError('mse_loss_forward')


def mse_loss_backward(*args, **kwargs):
    raise NotImplementedError('mse_loss_backward')


