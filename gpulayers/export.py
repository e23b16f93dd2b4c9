"""Export a model's weights to safetensors, a format PyTorch loads.

    python -m gpulayers.export ckpt.npz model.safetensors     # from a training checkpoint

The tensors keep PyTorch's ``state_dict`` keys (``0.weight``, ``3.running_mean``, ...), so
``model.load_state_dict(safetensors.torch.load_file("model.safetensors"))`` fills the PyTorch twin
of the model. Needs the ``safetensors`` package (``pip install "gpulayers[export]"``); PyTorch is
not needed to write the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from . import backend
from .checkpoint import CheckpointError, load_checkpoint

__all__ = ["export_safetensors", "save_safetensors", "main"]


def _require_safetensors():
    try:
        from safetensors.numpy import save_file  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f'exporting needs the safetensors package ({exc}): pip install "gpulayers[export]"') from exc
    return save_file


def save_safetensors(state: Any, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a model's weights (a Module, or a ``state_dict``) to ``path`` as safetensors, atomically.

    Args:
        state: a :class:`gpulayers.nn.Module` (its ``state_dict()``) or a dict of arrays.
        path: the ``.safetensors`` file (its folder is created when missing).
        metadata: optional string pairs stored in the file's header.
    """
    save_file = _require_safetensors()
    tensors = state.state_dict() if hasattr(state, "state_dict") else state
    if not isinstance(tensors, dict):
        raise TypeError(f"save_safetensors: expected a Module or a dict of arrays, got {type(state).__name__}")
    arrays = {str(k): np.array(backend.to_numpy(v), order="C") for k, v in tensors.items()}  # keeps 0-d
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def export_safetensors(checkpoint: str | Path, path: str | Path) -> list[str]:
    """The model weights of a training checkpoint (``model/<key>``) as safetensors at ``path``.

    Returns:
        The keys written (PyTorch's ``state_dict`` names).
    """
    state = load_checkpoint(checkpoint, restore_rng=False)
    if not state["model"]:
        raise CheckpointError(checkpoint, "holds no model weights (no 'model/...' entries)")
    save_safetensors(state["model"], path, metadata={"format": "pt", "source": Path(checkpoint).name})
    return list(state["model"])


def main(argv: list[str] | None = None) -> int:
    """``python -m gpulayers.export CHECKPOINT OUT.safetensors``; exit status 2 on a bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m gpulayers.export", description="Write a checkpoint's model weights as safetensors."
    )
    parser.add_argument("checkpoint", help="a .npz checkpoint written by gpulayers")
    parser.add_argument("output", help="the .safetensors file to write")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        keys = export_safetensors(args.checkpoint, args.output)
    except (CheckpointError, FileNotFoundError, ImportError, OSError) as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(keys)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
