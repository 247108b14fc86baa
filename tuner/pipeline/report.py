"""The study report: Optuna's plotly figures in one self-contained HTML file (plotly.js embedded once), under the
refit's lines when the study has one (tuner.pipeline.refit), and for a study with a serving budget
(study.constraints) the score against each complete trial's serving cost.

Axes name the metric as everywhere else: the trials' score is `score_<metric>` (best epoch), the intermediate
values are the per-epoch curves `epoch_<metric>`, or with training.eval_every the validation sample's
`step_<metric>` (see tuner.trials.names.score_name, curve_name)."""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import optuna
from optuna import visualization as vis

from deepfm_tuner.tuner.pipeline.refit import record_lines, recorded
from deepfm_tuner.tuner.trials.constraints import Cost, recorded_budget, within_budget
from deepfm_tuner.tuner.trials.names import EPOCH_PREFIX, score_name

FIGURES = (  # (title, plot, takes target_name): the per-epoch plot has no target, its y axis is renamed instead
    ("Optimization history", vis.plot_optimization_history, True),
    ("Intermediate values (the validation metric each trial reported)", vis.plot_intermediate_values, False),
    ("Hyperparameter importances", vis.plot_param_importances, True),
    ("Parallel coordinates", vis.plot_parallel_coordinate, True),
    ("Slice plot", vis.plot_slice, True),
)


def plot_cost(study: optuna.Study, target_name: str):
    """Score against scoring latency (parameter count when the budget has no latency), one point per complete
    trial: within the serving budget as filled circles, over it as crosses; the budget as a dashed line."""
    import plotly.graph_objects as go  # plotly comes with Optuna's visualization; only the report draws

    budget = recorded_budget(study) or {}
    by_latency = "max_latency_ms" in budget
    points = [(t, Cost.of(t)) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    points = [(t, c) for t, c in points if (c.latency_ms if by_latency else c.parameters) is not None]
    if not points:
        raise ValueError("no complete trial has recorded its serving cost")
    figure = go.Figure()
    for fits, name, marker in ((True, "within budget", {"symbol": "circle", "size": 9}),
                               (False, "over budget", {"symbol": "x", "size": 9, "color": "grey"})):
        chosen = [(t, c) for t, c in points if within_budget(t) == fits]
        figure.add_trace(go.Scatter(
            x=[c.latency_ms if by_latency else c.parameters for _, c in chosen], y=[t.value for t, _ in chosen],
            mode="markers", name=name, marker=marker, hovertemplate="%{text}<br>%{y:.4f}<extra></extra>",
            text=[f"trial {t.number}: {c.describe(budget)}" for t, c in chosen]))
    limit, title = budget.get("max_latency_ms" if by_latency else "max_parameters"), ""
    farthest = max((c.latency_ms if by_latency else c.parameters) for _, c in points)
    if limit is not None and limit <= 1.5 * farthest:
        figure.add_vline(x=limit, line_dash="dash", annotation_text="budget")
    elif limit is not None:  # a line far to the right would squeeze every trial into the left edge
        title = f"the budget ({f'{limit:g} ms' if by_latency else f'{limit:,} parameters'}) is far right of every trial"
    figure.update_layout(xaxis_title="score_latency_ms (median of 5, 1,000 rows)" if by_latency else "parameter_count",
                         yaxis_title=target_name, title=title)
    return figure


def _figures(study: optuna.Study, metric: str, curve: str) -> list[str]:
    """One HTML section per figure the study's trials allow; the others say why they are not available yet."""
    sections, plotly_included = [], False
    budgeted = (("Score vs serving cost (study.constraints)", plot_cost, True),) if recorded_budget(study) else ()
    for title, plot, takes_target in FIGURES + budgeted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if takes_target:
                    figure = plot(study, target_name=score_name(metric))
                else:
                    figure = plot(study)
                    figure.update_layout(yaxis_title=curve)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            sections.append(f"<h2>{html.escape(title)}</h2><p>not available yet: {html.escape(str(exc))}</p>")
            continue
        body = figure.to_html(full_html=False, include_plotlyjs=not plotly_included)
        plotly_included = True
        sections.append(f"<h2>{html.escape(title)}</h2>{body}")
    return sections


def write_report(study: optuna.Study, path: str | Path, metric: str = "val_auc", curve: str | None = None) -> Path:
    """Write every figure the study's trials allow (importances need 2+ complete trials with varied params);
    `metric` is the study metric, named on the axes (`score_<metric>`); `curve` names the intermediate values
    (default: per-epoch `epoch_<metric>`; `curve_name` gives `step_<metric>` for studies with eval_every)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials" is said in the page, not on stderr
    try:
        sections = _figures(study, metric, curve or f"{EPOCH_PREFIX}{metric}")
    finally:
        optuna.logging.set_verbosity(verbosity)
    states = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    refit = record_lines(recorded(study), metric)  # study.refit: the chosen configuration on every training row
    refit_section = f"<h2>Refit</h2><pre>{html.escape(chr(10).join(refit))}</pre>" if refit else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Study {html.escape(study.study_name)}</title>"
            f"</head><body style='font-family:sans-serif'><h1>Study {html.escape(study.study_name)}</h1>"
            f"<p>{len(study.trials)} trials: {html.escape(summary)}</p>{refit_section}{''.join(sections)}</body></html>")
    path.write_text(page)
    return path
