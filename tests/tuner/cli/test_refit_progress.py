"""Issue 16 item 5: each refit on every row shows a progress bar like a trial's (epochs done of its max, the rate
and the time left) and prints each epoch as it lands; with several candidates (study.refit.candidates) each
configuration gets its own bar, and the V1 baseline's refit is named as such."""

from __future__ import annotations

from rich.console import Console

from deepfm_tuner.model.train import EpochMetrics
from deepfm_tuner.tuner.cli.progress import TrialProgress
from deepfm_tuner.tuner.pipeline.refit import RefitTask


def epoch(number: int) -> EpochMetrics:
    return EpochMetrics(epoch=number, train_loss=0.45, val_auc=0.75 + number / 100, val_logloss=0.44, seconds=10.0,
                        samples_per_second=100_000.0, samples=(number + 1) * 1_000_000)


def test_each_refit_has_its_own_bar_and_prints_its_epochs():
    console = Console(width=120, record=True, force_terminal=False)
    view = TrialProgress(console, total=30, max_epochs=3, metric="val_auc", direction="maximize")
    with view:
        first, second = RefitTask("refit", 7, 1_000_000, 3), RefitTask("refit", 12, 1_000_000, 3)
        view.on_refit_epoch(first, epoch(0))
        view.on_refit_epoch(first, epoch(1))
        view.on_refit_epoch(second, epoch(0))
        view.on_refit_epoch(RefitTask("refit_baseline", 0, 1_000_000, 3), epoch(0))
        bars = {key: view.progress.tasks[task_id] for key, task_id in view.refits.items()}
        assert set(bars) == {"refit-7", "refit-12", "refit_baseline-0"}
        assert (bars["refit-7"].completed, bars["refit-7"].total) == (2, 3)  # the second candidate did not move it
        assert bars["refit-12"].completed == 1 and bars["refit_baseline-0"].fields["what"] == "baseline refit"
        assert bars["refit-7"].description == ("trial 7 on 1,000,000 rows: val_auc 0.7600, 100,000 samples/s, at most "
                                               "~10s left")
    lines = [line for line in console.export_text().splitlines() if " of trial " in line]
    assert [line.split(": epoch")[0] for line in lines] == [
        "refit of trial 7", "refit of trial 7", "refit of trial 12", "baseline refit of trial 0"]
    assert lines[1].startswith("refit of trial 7: epoch 2: train_loss 0.4500  val_auc 0.7600")
