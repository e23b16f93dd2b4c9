"""GPU-only settings and tools: which GEMM the convolutions and linear layers use, and a
training step captured once and replayed as a CUDA graph (:func:`graphed`).

``set_conv_algorithm`` chooses, for CuPy arrays, between

* ``"implicit_gemm"``: the kernels of ``cuda_kernels/conv2d_igemm.cu``, which gather their
  operands straight from the NCHW arrays (no column matrix, no cuBLAS; a step built from them
  can be captured as a CUDA graph);
* ``"im2col"``: a column matrix, cuBLAS GEMMs through CuPy, and ``col2im``;
* ``"auto"`` (the default): ``"direct"`` kernels when every output channel reads a single
  input channel (depthwise convolutions, one-channel inputs); else :data:`DEFAULT_GEMM` for
  convolutions whose forward product is under :data:`IMPLICIT_GEMM_MAX_FLOPS`, and ``"im2col"``
  for larger ones, where cuBLAS's tuned GEMMs win (measured on H100/H200 with
  ``benchmarks/conv_algorithms.py``: implicit GEMM 0.97-1.7x cuDNN below 1 GFLOP, but 2.2-3.3x
  at 5-40 GFLOP where im2col is 1.3-2.2x). Linear layers always take implicit GEMM under ``"auto"``.

The choice is read at each forward; backward follows what its forward used.
"""

from __future__ import annotations

from typing import Any

from . import backend

__all__ = [
    "CONV_ALGORITHMS",
    "DEFAULT_GEMM",
    "IMPLICIT_GEMM_MAX_FLOPS",
    "GraphedStep",
    "get_conv_algorithm",
    "graphed",
    "set_conv_algorithm",
]

#: What :func:`set_conv_algorithm` accepts.
CONV_ALGORITHMS = ("auto", "implicit_gemm", "im2col", "direct")

#: The GEMM ``"auto"`` uses for convolutions with several input channels per group, and for Linear.
DEFAULT_GEMM = "implicit_gemm"

#: Forward FLOPs (2 x multiply-adds) from which ``"auto"`` moves a convolution to ``"im2col"``.
IMPLICIT_GEMM_MAX_FLOPS = 1e9

_conv_algorithm = "auto"


def set_conv_algorithm(algorithm: str) -> None:
    """Choose the GPU algorithm of conv2d, conv_transpose2d and linear (see the module doc).

    Args:
        algorithm: one of :data:`CONV_ALGORITHMS`. ``"direct"`` applies to convolutions only;
            linear layers then use ``"implicit_gemm"``.
    """
    global _conv_algorithm
    if not isinstance(algorithm, str) or algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"set_conv_algorithm: expected one of {', '.join(CONV_ALGORITHMS)}, got {algorithm!r}")
    _conv_algorithm = algorithm


def get_conv_algorithm() -> str:
    """The algorithm set by :func:`set_conv_algorithm` (``"auto"`` unless changed)."""
    return _conv_algorithm


# ----------------------------------------------------------------------------------------------
# A training step as one CUDA graph
# ----------------------------------------------------------------------------------------------
def _signature(arrays) -> tuple:
    return tuple((tuple(a.shape), str(a.dtype)) for a in arrays)


def _scalars(value: Any) -> Any:
    """The Python scalars of an optimiser's groups and state (arrays left out), as a hashable."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _scalars(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_scalars(v) for v in value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return "<array>" if hasattr(value, "shape") else type(value).__name__


class GraphedStep:
    """A step function (forward, loss, backward, optimiser step) replayed as one CUDA graph.

    Build it with :func:`graphed`. Each call takes arrays shaped like the samples; the first
    ``warmup`` calls run eagerly (they compile the kernels and create the optimiser's state),
    the next one captures the step on a private stream and memory pool, and every call from
    then on copies its inputs into the graph's static buffers and replays the graph: one
    launch. The return value is the step's return value from the capture (its arrays are
    overwritten by each replay, as PyTorch's graphed outputs are).

    Capture records kernels with the arguments they had, so what the step reads from Python
    is frozen in the graph, except what the kernels read from device memory. The fused optimiser
    kernels read the learning rates and step counts (Adam's bias corrections), which each replay
    uploads with one asynchronous copy: a scheduler's new lr and every new step count replay
    without a new capture. The optimiser's other Python scalars (momenta, betas, weight decay,
    which state exists; learning rates and step counts too when some parameter takes the NumPy
    code) are compared before every call, and a change captures the step anew; when they change
    at every step, the step runs eagerly rather than replay stale values. Dropout needs no
    recapture: its kernel reads the generator's seed and offset from device memory, and each
    replay first writes the device's next offset there (one asynchronous host-to-device copy)
    and advances the offset by what the step draws, so every replay has fresh masks, the same
    as an eager step from the same random state.
    Parameters must keep their arrays (optimisers and ``load_state_dict`` update in place).

    Where capture cannot work the step runs eagerly and :attr:`reason` says why in one line
    (printed once through ``log``): CPU arrays, an operation that CUDA graphs refuse (a
    cuBLAS GEMM, cuRAND, a host synchronisation such as ``float(loss)``), or an input shape
    other than the samples' (the last, smaller batch of an epoch runs eagerly; drop it with
    ``drop_last=True`` to keep every step in the graph).
    """

    def __init__(self, step, *sample_inputs, optimizer=None, model=None, warmup: int = 1, log=print) -> None:
        if not callable(step):
            raise TypeError(f"graphed: step must be callable, got {type(step).__name__}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"graphed: warmup must be an int >= 0, got {warmup!r}")
        self.step, self.optimizer, self.model, self.warmup, self.log = step, optimizer, model, warmup, log
        self.signature = _signature(sample_inputs) if sample_inputs else None  # else the first call's
        self.reason: str | None = None
        self.captures = 0
        self.replays = 0
        self._calls = 0
        self._graph_replays = 0
        self._short_lived = 0  # graphs in a row replaced after a single replay
        self._graph = None
        self._key = None
        self._static: list = []
        self._outputs = None
        self._stream = None
        self._pool = None
        self._rng = None  # the graph's random-generator state (backend.philox_capture)
        self._optimizer_launches: tuple = ([], {})
        self._noted: set[str] = set()
        if sample_inputs:
            self._check_device(sample_inputs)

    def _check_device(self, inputs) -> None:
        if not all(backend.is_cuda_array(x) for x in inputs):
            self._eager_for_good("the inputs are not CuPy arrays: CUDA graphs need the GPU")

    def _note(self, line: str) -> None:
        if line not in self._noted:
            self._noted.add(line)
            if self.log is not None:
                self.log(f"cuda graph: {line}")

    def _eager_for_good(self, why: str) -> None:
        self.reason = why
        self._graph = None
        self._note(f"{why}; the step runs eagerly")

    def _scalars_key(self):
        """What the captured kernels took from Python: the optimiser's scalars, which a replay
        would otherwise freeze (the random generator's offset lives in device memory)."""
        if self.optimizer is None:
            return None
        # What the fused optimiser kernels read from device memory (lr, step counts) is left out:
        # the replay uploads it (_replay).
        resident = getattr(self.optimizer, "_device_resident", frozenset())
        groups, states = self.optimizer.param_groups, list(getattr(self.optimizer, "state", {}).values())
        groups, states = ([{k: v for k, v in d.items() if k not in resident} for d in ds] for ds in (groups, states))
        return _scalars([groups, states])

    @property
    def captured(self) -> bool:
        """Whether a graph is ready to replay."""
        return self._graph is not None

    def __call__(self, *inputs):
        if self.signature is None:
            self.signature = _signature(inputs)
            self._check_device(inputs)
        if self.reason is not None:
            return self.step(*inputs)
        if _signature(inputs) != self.signature:
            self._note(f"inputs {_signature(inputs)} differ from the captured {self.signature}: that call runs eagerly")
            return self.step(*inputs)
        if self._calls < self.warmup:
            self._calls += 1
            return self.step(*inputs)
        key = self._scalars_key()
        if self._graph is None or key != self._key:
            if self._graph is not None:
                self._short_lived = self._short_lived + 1 if self._graph_replays <= 1 else 0
                if self._short_lived >= 2:
                    self._eager_for_good(
                        "the step's Python scalars change at every step (optimiser options, NumPy-path step counts)"
                    )
                    return self.step(*inputs)
            if not self._capture(inputs, key):
                return self.step(*inputs)
        return self._replay(inputs)

    def _capture(self, inputs, key) -> bool:
        cupy = backend.get_array_module(inputs[0])  # the inputs are CuPy arrays

        self._stream = self._stream or cupy.cuda.Stream()
        self._pool = cupy.cuda.MemoryPool()  # intermediates stay reserved for the graph's lifetime
        saved = self.optimizer.state_dict() if self.optimizer is not None else None
        with (
            inputs[0].device,
            backend.philox_capture(inputs[0].device.id) as rng,
            cupy.cuda.using_allocator(self._pool.malloc),
            self._stream,
        ):
            self._static = [cupy.empty_like(x) for x in inputs]
            tables = self._use_optimizer_tables({})
            self._stream.begin_capture()
            try:
                outputs = self.step(*self._static)
            except Exception as exc:  # noqa: BLE001 - any refusal under capture means: run eagerly
                try:
                    self._stream.end_capture()
                except Exception:  # noqa: BLE001 - an invalidated capture also fails to end
                    pass
                self._use_optimizer_tables(None)
                self._undo_failed_capture(saved)
                first_line = (str(exc).splitlines() or [""])[0][:160]
                self._eager_for_good(f"capture failed ({type(exc).__name__}: {first_line})")
                return False
            self._graph = self._stream.end_capture()
        self._use_optimizer_tables(None)
        self._optimizer_launches = (getattr(self.optimizer, "_fused_batches", []), tables)
        self._outputs, self._key, self._rng = outputs, key, rng
        self._graph_replays = 0
        self.captures += 1
        return True

    def _use_optimizer_tables(self, tables):
        """Give a capture its own optimiser launch tables (uploaded before each replay), or None after.

        The new tables start with the last step's contents (one copy, before the capture), so that
        they hold valid addresses even where a capture runs the kernels it records."""
        optimizer = self.optimizer
        if optimizer is not None and hasattr(optimizer, "_capture_tables"):
            optimizer._capture_tables = tables
            if tables is not None and optimizer._fused_batches:
                optimizer._before_replay(optimizer._fused_batches, tables, advance=False)
        return tables

    def _undo_failed_capture(self, saved) -> None:
        """Nothing ran on the GPU, but the step's Python side ran part way: put it back."""
        if saved is not None:
            self.optimizer.load_state_dict(saved)
        if self.model is not None:
            for module in self.model.modules():
                if hasattr(module, "discard_saved"):
                    module.discard_saved()

    def _replay(self, inputs):
        with inputs[0].device, self._stream:
            for static, x in zip(self._static, inputs, strict=True):
                static[...] = x
            backend.philox_replay(self._rng, self._stream)
            if self._optimizer_launches[0]:  # the step's host side, and its lr and step counts uploaded
                self.optimizer._before_replay(*self._optimizer_launches, advance=self._graph_replays > 0)
            self._graph.launch(stream=self._stream)
        self.replays += 1
        self._graph_replays += 1
        return self._outputs


def graphed(step, *sample_inputs, optimizer=None, model=None, warmup: int = 1, log=print) -> GraphedStep:
    """Wrap ``step(*inputs)`` so that it runs as one CUDA graph (see :class:`GraphedStep`).

    Args:
        step: the whole training step, e.g. zero_grad, forward, loss, backward, optimiser step;
            it returns what the caller needs (say the 0-d loss array).
        sample_inputs: arrays with the shapes and dtypes of every later call's inputs (none: the
            first call's inputs set them).
        optimizer: the optimiser the step uses, so that a changed learning rate recaptures (and its
            state is put back if a capture fails part way).
        model: the model the step trains, whose saved forwards are dropped after a failed capture.
        warmup: eager calls before the capture (at least 1 when the optimiser creates state on
            its first step, as SGD with momentum does).
        log: receives the one-line reason when the step cannot be graphed (None for silence).
    """
    return GraphedStep(step, *sample_inputs, optimizer=optimizer, model=model, warmup=warmup, log=log)
