"""STUB: replaced by the owner of this file."""

def gradcheck(*args, **kwargs):
    raise NotImplementedError('gradcheck')


