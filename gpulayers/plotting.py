"""Training curves as a PNG (needs matplotlib): ``save_plot(history, path)``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_figure", "require_matplotlib", "save_plot"]


def require_matplotlib():
    """matplotlib's pyplot on the Agg backend (ImportError with the install line when missing)."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f'--plot needs matplotlib ({exc}): pip install "gpulayers[train]"') from exc
    return plt


def plot_figure(history: list[dict], title: str = ""):
    """The figure :func:`save_plot` writes: loss, accuracy in % and learning rate per epoch, with
    the best epoch (lowest test loss) marked by a dashed line on each."""
    from ._cli_log import best_epoch  # noqa: PLC0415

    plt = require_matplotlib()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    if history and all(r["test_accuracy"] is not None for r in history):
        ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
        ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", label="test")
    ax_lr.plot(epochs, [r["lr"] for r in history], "o-", label="learning rate")
    best = best_epoch(history)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy (%)"), (ax_lr, "learning rate")):
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_plot(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss, accuracy (%) and learning-rate curves per epoch, the best epoch marked, as a PNG."""
    plt = require_matplotlib()
    fig = plot_figure(history, title)
    try:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(path).expanduser(), dpi=100)
    finally:
        plt.close(fig)
