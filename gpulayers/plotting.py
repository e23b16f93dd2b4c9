"""Training curves as a PNG (needs matplotlib): ``save_plot(history, path)``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["require_matplotlib", "save_plot"]


def require_matplotlib():
    """matplotlib's pyplot on the Agg backend (ImportError with the install line when missing)."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f'--plot needs matplotlib ({exc}): pip install "gpulayers[train]"') from exc
    return plt


def save_plot(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and accuracy curves per epoch, as a PNG."""
    plt = require_matplotlib()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    if any(r["test_accuracy"] is not None for r in history):
        ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
        ax_acc.plot(epochs, [r["test_accuracy"] for r in history], "s-", label="test")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
