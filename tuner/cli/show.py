"""What the commands print: the tuning result, the status table, the finalists, a promotion, a model's alias
history, a rollback and two versions compared. Kept apart from the commands so each reads as: load, call the
library, show."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from deepfm_tuner.model.config import policy_to_v1_yaml, policy_with_training_yaml
from deepfm_tuner.tuner.pipeline.refit import refit_lines
from deepfm_tuner.tuner.spec.space import TRAINING_PREFIX, Fixed, Layers, layers_label, shown_params, tuned_training
from deepfm_tuner.tuner.trials.baseline import describe_lift, is_baseline
from deepfm_tuner.tuner.trials.constraints import budget_lines, over_budget, within_budget
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
    what = (f"registered {name} version {p.version}" if p.registered else
            f"{name} version {p.version} already holds this checkpoint, not registered again")
    console.print(f"{what} (test AUC {p.test_auc:.4f}) -> alias '{p.alias}'{': ' + p.reason if p.reason else ''}")
    console.print(f"model URI: {p.model_uri}")
    if p.baseline_message:
        console.print(p.baseline_message)
    if p.reference_message:
        console.print(p.reference_message, markup=False, highlight=False)


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines of left-aligned columns two spaces apart (plain text: no cell wraps or is read as markup)."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def print_history(console: Console, name: str, events) -> None:
    """One line per alias move, newest first, each followed by its reason and who made it."""
    if not events:
        console.print(f"no alias moves recorded for '{name}' yet (promotions and rollbacks record them)", markup=False)
        return
    rows = [("when (UTC)", "event", "versions", "test AUC", "study")]
    for e in events:
        was = "-" if e.from_version is None else f"v{e.from_version}"
        aucs = _auc(e.to_test_auc) if e.from_version is None else f"{_auc(e.from_test_auc)} -> {_auc(e.to_test_auc)}"
        rows.append((e.time[:19].replace("T", " "), e.action, f"{was} -> v{e.to_version}", aucs, e.study))
    lines = _aligned(rows)
    console.print(f"alias moves of '{name}', newest first", markup=False)
    console.print(lines[0], markup=False)
    for line, e in zip(lines[1:], events):
        console.print(line, markup=False)
        console.print(f"    @{e.alias}, by {e.by}: {e.reason}", markup=False)


def print_rollback(console: Console, done) -> None:
    if done.event is None:
        console.print(f"{done.name}: version {done.to_version} already is the champion; nothing moved", markup=False)
        return
    was = "none" if done.from_version is None else f"v{done.from_version}"
    console.print(f"rolled back {done.name}: champion {was} -> v{done.to_version} (test AUC "
                  f"{_auc(done.event.from_test_auc)} -> {_auc(done.event.to_test_auc)}); recorded in 'deepfm history "
                  f"{done.name}'", markup=False)


def print_diff(console: Console, diff) -> None:
    """The two versions' facts and scores side by side (score differences as B - A), then the config keys that
    differ."""
    def short(key: str, value: str) -> str:
        return value[:12] if key == "run" else value

    rows = [("", diff.a.reference, diff.b.reference, "")]
    rows += [(key, short(key, a), short(key, b), "" if a == b else "differs") for key, a, b in diff.fact_rows()]
    rows += [(key, a, b, delta) for key, a, b, delta in diff.score_rows()]
    config = diff.config_rows()
    for line in _aligned(rows):
        console.print(line, markup=False)
    if not config:
        console.print("V1 config and training: identical", markup=False)
        return
    console.print(f"V1 config and training: {len(config)} difference{'s' if len(config) > 1 else ''}", markup=False)
    for line in _aligned([(f"  {key}", a, b) for key, a, b in config]):
        console.print(line, markup=False)


def print_trained(console: Console, trial, spec) -> None:
    """What the trial trained, as recorded at its start (not rebuilt from today's study file)."""
    text = policy_with_training_yaml(*trained_config(trial, spec))
    console.print(f"best trial {trial.number} trained:", markup=False)
    console.print(text.rstrip(), markup=False, highlight=False)


def print_lines(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(line, markup=False, highlight=False)


def print_finalists(console: Console, result: FinalistsResult | None) -> None:
    if result is not None:
        print_lines(console, table_lines(result))


def print_tune_result(console: Console, spec, result, tracking_uri: str | None) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
    console.print(f"study '{spec.name}': {counts}")
    if result.best_trial is None:
        if over_budget(result.handle.study):  # trials completed, none within the serving budget
            print_lines(console, budget_lines(result.handle.study, spec.metric))
        else:
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
    print_lines(console, budget_lines(result.handle.study, spec.metric))
    console.print(describe_lift(result.handle.study, spec.metric))
    print_finalists(console, result.finalists)
    print_lines(console, refit_lines(result.handle.study, spec))
    if result.reference is not None:
        console.print(result.reference.line(), markup=False, highlight=False)
    if result.promotion is not None:
        print_promotion(console, spec.model_name, result.promotion)
    uri = result.handle.tracking_uri
    if uri.startswith(("http://", "https://")):
        console.print(f"browse the trials: open {uri} (experiment '{spec.experiment_name}')")
    else:
        console.print(f"browse the trials: deepfm ui {spec.source}{' --tracking-uri ' + uri if tracking_uri else ''}  "
                      f"(MLflow UI on http://127.0.0.1:5000, 'Model training' view)")


# each tuned hyperparameter's column header in `deepfm status` (its full name stays in MLflow and the legend)
SHORT_NAMES = {"embedding_dim": "emb", "deep_hidden_units": "mlp", "activation_fn": "act", "dropout": "drop",
               "learning_rate": "lr", f"{TRAINING_PREFIX}embedding_l2": "emb_l2",
               f"{TRAINING_PREFIX}weight_decay": "wd", f"{TRAINING_PREFIX}batch_size": "batch"}


def compact(value) -> str:
    """A hyperparameter in a few characters: 0.1, 0.25, 3.2e-4, 1e-3, 128-64-32, relu."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return layers_label(value)
    if not isinstance(value, float):
        return str(value)
    if value.is_integer() and abs(value) < 1e5:
        return str(int(value))
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _tuned_value(params: dict, name: str, spec) -> str:
    """The trial's value of one tuned hyperparameter ('' when it has none, e.g. a trial that never started)."""
    shown = shown_params(params)
    if name in shown:
        return compact(shown[name])
    if isinstance(spec, Layers) and f"{name}.depth" in params:
        return layers_label(params.get(f"{name}.l{i}", 0) for i in range(int(params[f"{name}.depth"])))
    return ""


def compact_seconds(seconds: float) -> str:
    """41s, 17m, 2.5h: a trial's duration in at most four characters."""
    if seconds < 99.5:
        return f"{seconds:.0f}s"
    if seconds < 5970:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h" if seconds < 35640 else f"{seconds / 3600:.0f}h"


# when the table is wider than the terminal, these columns give way first, in this order, down to these widths:
# the score and best-epoch headers are wider than their values, the state says the most in its first characters
SHRINK_FIRST = ((2, 6), (3, 4), (1, 8))


def _one_line_per_row(headers: tuple[str, ...], rows: list[tuple[str, ...]], width: int) -> Table:
    """A borderless table whose every row is one line at `width` columns: no cell wraps; when the natural widths
    do not fit, SHRINK_FIRST's columns are cut short (with an ellipsis) before the rest are."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    limits: dict[int, int] = {}
    excess = sum(widths) + len(widths) - 1 - width
    for index, narrowest in SHRINK_FIRST:
        if excess <= 0:
            break
        cut = min(excess, max(0, widths[index] - narrowest))
        if cut:
            limits[index] = widths[index] - cut
            excess -= cut
    table = Table(box=None, pad_edge=False, collapse_padding=True)
    for index, header in enumerate(headers):
        table.add_column(Text(header), justify="left" if index == 1 else "right", no_wrap=True, overflow="ellipsis",
                         max_width=limits.get(index))
    for row in rows:
        table.add_row(*map(Text, row))  # plain text: a value is never read as rich markup
    return table


def print_status(console: Console, study, spec) -> None:
    """Trials table, one line per trial (number, state, score at the best epoch, best epoch, time, then one narrow
    column per tuned hyperparameter; the fixed ones stated once above it), the best trial, the serving budget (a
    complete trial over it reads "over budget"), the refit on every training row (its own lines, below the table),
    the lift over the V1 baseline and the finalists."""
    score = score_name(spec.metric)
    tuned = {**{name: s for name, s in spec.space.items() if not isinstance(s, Fixed)}, **spec.training_space}
    fixed = {name: s.value for name, s in spec.space.items() if isinstance(s, Fixed)}
    console.print(f"study '{spec.name}'", markup=False, highlight=False)
    if fixed:
        console.print("fixed: " + ", ".join(f"{name} {compact(value)}" for name, value in fixed.items()),
                      markup=False, highlight=False)
    if tuned:
        console.print("tuned: " + ", ".join(f"{SHORT_NAMES.get(name, name)}={name}" for name in tuned),
                      markup=False, highlight=False)
    rows, seeded = [], []
    for t in study.get_trials(deepcopy=False):
        value = trial_score(t, spec.direction)
        best_epoch = Training.of(t).best_epoch
        state = "skipped" if t.user_attrs.get(ATTR_SKIPPED) else t.state.name.lower()
        if pruned_where(t) is not None:
            state = pruned_where(t)
        elif t.state.name == "COMPLETE" and not within_budget(t):  # study.constraints: never champion
            state = "over budget"
        origin = "(V1 baseline)" if is_baseline(t) else (
            f"(from {t.user_attrs[ATTR_WARM_START]})" if t.user_attrs.get(ATTR_WARM_START) else "")
        if origin:
            seeded.append(f"trial {t.number} {origin}")
        rows.append((str(t.number), state, "" if value is None else f"{value:.4f}",
                     "" if best_epoch is None else str(human_epoch(best_epoch)),
                     compact_seconds(t.duration.total_seconds()) if t.duration else "",
                     *(_tuned_value(t.params, name, s) for name, s in tuned.items())))
    headers = ("#", "state", score, "best epoch", "time", *(SHORT_NAMES.get(name, name) for name in tuned))
    console.print(_one_line_per_row(headers, rows, console.width))
    if seeded:
        console.print("seeded trials: " + ", ".join(seeded), markup=False, highlight=False)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(trial_counts(study).items()))
    best = best_trial(study)
    console.print(f"{counts or 'no trials'}" + (f"; best trial {best.number}: {score} {best.value:.4f}" if best else ""))
    print_lines(console, budget_lines(study, spec.metric))
    print_lines(console, refit_lines(study, spec))
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
