"""What the study commands print: the tuning result, the status table, the finalists and a promotion. Kept apart
from the commands so each reads as: load, call the library, show."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from deepfm_tuner.model.config import policy_to_v1_yaml, policy_with_training_yaml
from deepfm_tuner.tuner.spec.space import shown_params, tuned_training
from deepfm_tuner.tuner.trials.baseline import describe_lift, is_baseline
from deepfm_tuner.tuner.trials.finalists import FinalistsResult, current_result, table_lines
from deepfm_tuner.tuner.trials.names import ATTR_SKIPPED, ATTR_WARM_START, score_name
from deepfm_tuner.tuner.trials.record import (
    Training,
    best_trial,
    human_epoch,
    pruned_where,
    trained_config,
    trial_counts,
    trial_score,
)


def print_promotion(console: Console, name: str, p) -> None:
    console.print(f"registered {name} version {p.version} (test AUC {p.test_auc:.4f}) -> alias '{p.alias}'"
                  f"{': ' + p.reason if p.reason else ''}")
    console.print(f"model URI: {p.model_uri}")
    if p.baseline_message:
        console.print(p.baseline_message)


def print_trained(console: Console, trial, spec) -> None:
    """What the trial trained, as recorded at its start (not rebuilt from today's study file)."""
    text = policy_with_training_yaml(*trained_config(trial, spec))
    console.print(f"best trial {trial.number} trained:", markup=False)
    console.print(text.rstrip(), markup=False, highlight=False)


def print_finalists(console: Console, result: FinalistsResult | None) -> None:
    if result is not None:
        for line in table_lines(result):
            console.print(line, markup=False, highlight=False)


def print_tune_result(console: Console, spec, result, tracking_uri: str | None) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
    console.print(f"study '{spec.name}': {counts}")
    if result.best_trial is None:
        console.print("no trial completed; see 'deepfm status' for the failures")
        return
    best = result.best_trial
    policy, training = trained_config(best, spec)
    console.print(f"best trial {best.number}: score_{spec.metric} {best.value:.4f}; its V1 config:")
    console.print(policy_to_v1_yaml(policy).rstrip())
    if spec.training_space and training is not None:  # the tuned training knobs, as the training: block spells them
        chosen = tuned_training(training, spec.training_space)
        console.print("training: " + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}"
                                               for k, v in chosen.items()), markup=False, highlight=False)
    console.print(describe_lift(result.handle.study, spec.metric))
    print_finalists(console, result.finalists)
    if result.promotion is not None:
        print_promotion(console, spec.model_name, result.promotion)
    uri = result.handle.tracking_uri
    if uri.startswith(("http://", "https://")):
        console.print(f"browse the trials: open {uri} (experiment '{spec.experiment_name}')")
    else:
        console.print(f"browse the trials: deepfm ui {spec.source}{' --tracking-uri ' + uri if tracking_uri else ''}  "
                      f"(MLflow UI on http://127.0.0.1:5000, 'Model training' view)")


def print_status(console: Console, study, spec) -> None:
    """Trials table (number, state, score at the best epoch, best epoch, duration, params), the best trial, the
    lift over the V1 baseline and the finalists."""
    score = score_name(spec.metric)
    table = Table(title=f"study '{spec.name}'")
    for column in ("#", "state", score, "best epoch", "seconds", "params"):
        table.add_column(column, justify="left" if column in ("state", "params") else "right",
                         no_wrap=column != "params")
    for t in study.get_trials(deepcopy=False):
        value = trial_score(t, spec.direction)
        best_epoch = Training.of(t).best_epoch
        seconds = f"{t.duration.total_seconds():.1f}" if t.duration else ""
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown_params(t.params).items())
        state = "skipped" if t.user_attrs.get(ATTR_SKIPPED) else t.state.name.lower()
        if pruned_where(t) is not None:
            state = pruned_where(t)
        origin = " (V1 baseline)" if is_baseline(t) else (
            f" (from {t.user_attrs[ATTR_WARM_START]})" if t.user_attrs.get(ATTR_WARM_START) else "")
        table.add_row(str(t.number), state + origin, "" if value is None else f"{value:.4f}",
                      "" if best_epoch is None else str(human_epoch(best_epoch)), seconds, params)
    console.print(table)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(trial_counts(study).items()))
    best = best_trial(study)
    console.print(f"{counts or 'no trials'}" + (f"; best trial {best.number}: {score} {best.value:.4f}" if best else ""))
    if best is not None:
        print_trained(console, best, spec)
    if study.trials:
        console.print(describe_lift(study, spec.metric))
    if spec.finalists is not None:
        finalists = current_result(study, spec)
        print_finalists(console, finalists)
        if finalists is None and best is not None:
            console.print("finalists: not run yet for the current best trials ('deepfm tune' or 'deepfm promote' "
                          "re-trains them)")
