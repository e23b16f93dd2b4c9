"""The ops: stateless forward/backward pairs, one file per op family.

Each file holds the vectorised NumPy implementation and dispatches CuPy arrays to the GPU
implementation beside it (``*_cuda.py``, which launches the kernels in ``cuda_kernels/``).
"""
