"""Rich progress bars over epochs (`deepfm train`) and trials (`deepfm tune`) that print each epoch's or trial's
result as it lands; epochs are numbered for people, from 1 (tuner.trials.record.human_epoch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deepfm_tuner.tuner.cli.show import compact_seconds
from deepfm_tuner.tuner.spec.space import shown_params
from deepfm_tuner.tuner.trials.constraints import within_budget
from deepfm_tuner.tuner.trials.record import human_epoch, pruned_where, trial_score

if TYPE_CHECKING:  # the training loop (torch) is imported by the commands that train
    from deepfm_tuner.model.train import EpochMetrics
    from deepfm_tuner.tuner.pipeline.refit import RefitTask


def format_epoch(m: EpochMetrics) -> str:
    return (f"epoch {human_epoch(m.epoch)}: train_loss {m.train_loss:.4f}  val_auc {m.val_auc:.4f}  "
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


class TrialProgress:
    """Live view of a study: trials done/total, the current trial's epoch and metric, the time its remaining epochs
    take at the measured samples/s, the best so far; then the refit's epochs on every training row, the same way."""

    def __init__(self, console: Console, total: int | None, max_epochs: int, metric: str, direction: str):
        self.console, self.metric, self.max_epochs, self.direction = console, metric, max_epochs, direction
        self.progress = Progress(TextColumn("[bold]{task.fields[what]}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                                 transient=True)
        self.task = self.progress.add_task("", total=total, what="trials")
        self.best: tuple[int, float] | None = None
        self.rows: int | None = None  # training rows each trial sees
        self.refits: dict[str, int] = {}  # role-trial -> its progress task

    def __enter__(self) -> "TrialProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, finished: int, best: tuple[int, float] | None, rows: int | None = None) -> None:
        self.best, self.rows = best, rows
        self.progress.update(self.task, completed=finished)

    def _best_text(self) -> str:
        return f"best {self.best[1]:.4f} (#{self.best[0]})" if self.best else "best -"

    def on_epoch(self, trial, metrics: EpochMetrics) -> None:
        value = getattr(metrics, self.metric)
        left = _left(self.max_epochs - human_epoch(metrics.epoch), self.rows, metrics.samples_per_second)
        self.progress.update(self.task, description=f"trial {trial.number} epoch {human_epoch(metrics.epoch)}/{self.max_epochs} "
                                                    f"{self.metric} {value:.4f}{left} | {self._best_text()}")

    def on_refit_epoch(self, task: RefitTask, metrics: EpochMetrics) -> None:
        """The refit's bar: epochs done of its max_epochs on every training row (early stopping may end it sooner)."""
        key = f"{task.role}-{task.trial}"  # study.refit.candidates: a bar per configuration refit
        if key not in self.refits:
            what = "refit" if task.role == "refit" else "baseline refit"
            self.refits[key] = self.progress.add_task("", total=task.max_epochs, what=what)
        left = _left(task.max_epochs - human_epoch(metrics.epoch), task.rows, metrics.samples_per_second)
        self.progress.update(self.refits[key], completed=human_epoch(metrics.epoch), description=(
            f"trial {task.trial} on {task.rows:,} rows: {self.metric} {getattr(metrics, self.metric):.4f}, "
            f"{metrics.samples_per_second:,.0f} samples/s{left}"))
        self.console.print(f"{'refit' if task.role == 'refit' else 'baseline refit'} of trial {task.trial}: "
                           f"{format_epoch(metrics)}", markup=False, highlight=False)

    def on_trial(self, study, trial) -> None:
        state = trial.state.name
        fits = within_budget(trial)  # study.constraints: a trial over budget is never the best
        if state == "COMPLETE" and fits and (self.best is None or (
                trial.value > self.best[1] if self.direction == "maximize" else trial.value < self.best[1])):
            self.best = (trial.number, trial.value)
        score = trial_score(trial, self.direction)
        value = f"score_{self.metric} {score:.4f}" if score is not None else ""
        if pruned_where(trial) is not None:
            value = f"{value}, {pruned_where(trial)}" if value else pruned_where(trial)
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        params = ", ".join(f"{k}={_short(v)}" for k, v in shown_params(trial.params).items())
        shown = "over budget" if state == "COMPLETE" and not fits else state.lower()
        self.console.print(f"trial {trial.number:>3} {shown:<8} {value:<28} {seconds:6.1f}s  {params}  "
                           f"| {self._best_text()}")
        if state in ("COMPLETE", "PRUNED"):
            self.progress.advance(self.task)


def _left(epochs: int, rows: int | None, samples_per_second: float) -> str:
    """", at most ~4m left": the remaining epochs at the measured rate (early stopping or pruning may end sooner)."""
    if not epochs or not rows or samples_per_second <= 0:
        return ""
    seconds = epochs * rows / samples_per_second
    return f", at most ~{compact_seconds(seconds)} left"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
