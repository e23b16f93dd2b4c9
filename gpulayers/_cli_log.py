"""Per-epoch outputs of the command line: the CSV log (``--log-csv``), the best epoch and
early stopping on the test loss (``--early-stop``)."""

from __future__ import annotations

import csv
import io
from typing import Any

from .checkpoint import write_text_atomic
from .training import StopTraining

__all__ = ["CSV_COLUMNS", "EpochLog", "best_epoch", "csv_text"]

CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch with the lowest test loss (the training loss without a test set); None when empty.
    The earliest wins a tie."""
    key = "test_loss" if history and all(r.get("test_loss") is not None for r in history) else "train_loss"
    best = None
    for r in history:
        if r.get(key) is not None and (best is None or r[key] < best[key]):
            best = r
    return None if best is None else int(best["epoch"])


def csv_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV with the header :data:`CSV_COLUMNS` (empty cells for missing values)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    return out.getvalue()


class EpochLog:
    """``fit``'s ``on_epoch_end`` and ``on_resume`` for the command line.

    Keeps every epoch's record with its training seconds, rewrites the CSV at ``csv_path`` after
    each epoch (atomically), and stops training when the test loss has not improved for
    ``patience`` epochs.
    """

    def __init__(self, csv_path: str | None = None, patience: int | None = None) -> None:
        self.csv_path, self.patience = csv_path, patience
        self.rows: list[dict[str, Any]] = []
        self.stopped_early = False

    def resumed(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state["history"]]

    def __call__(self, record: dict[str, Any], seconds: float) -> None:
        self.rows.append({**record, "seconds": seconds})
        if self.csv_path:
            write_text_atomic(self.csv_path, csv_text(self.rows))
        if self.patience is not None:
            best = best_epoch(self.rows)
            if best is not None and record["epoch"] - best >= self.patience:
                self.stopped_early = True
                raise StopTraining(f"no better test loss for {self.patience} epochs (best: epoch {best})")

    @property
    def epoch_seconds(self) -> list[float]:
        return [r["seconds"] for r in self.rows if r.get("seconds") is not None]
