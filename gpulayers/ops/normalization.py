"""STUB: replaced by the owner of this file."""

def batch_norm_forward(*args, **kwargs):
    raise NotImplementedError('batch_norm_forward')


def batch_norm_backward(*args, **kwargs):
    raise NotImplementedError('batch_norm_backward')


