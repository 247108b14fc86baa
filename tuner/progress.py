"""A rich progress bar over epochs that prints each epoch's metrics as it lands."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from model.train import EpochMetrics


def format_epoch(m: EpochMetrics) -> str:
    return (f"epoch {m.epoch}: train_loss {m.train_loss:.4f}  val_auc {m.val_auc:.4f}  "
            f"val_logloss {m.val_logloss:.4f}  {m.samples_per_second:,.0f} samples/s")


class EpochProgress:
    def __init__(self, epochs: int, console: Console):
        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console, transient=True)
        self.task = self.progress.add_task("train", total=epochs)

    def __enter__(self) -> "EpochProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, metrics: EpochMetrics) -> None:
        self.progress.console.print(format_epoch(metrics))
        self.progress.advance(self.task)
