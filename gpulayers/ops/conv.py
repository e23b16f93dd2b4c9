"""STUB: replaced by the owner of this file."""

def conv2d_forward(*args, **kwargs):
    raise NotImplementedError('conv2d_forward')


def conv2d_backward(*args, **kwargs):
    raise NotImplementedError('conv2d_backward')


