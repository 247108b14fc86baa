"""The study report: Optuna's plotly figures in one self-contained HTML file (plotly.js embedded once)."""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import optuna
from optuna import visualization as vis

FIGURES = (
    ("Optimization history", vis.plot_optimization_history),
    ("Intermediate values (per-epoch validation metric)", vis.plot_intermediate_values),
    ("Hyperparameter importances", vis.plot_param_importances),
    ("Parallel coordinates", vis.plot_parallel_coordinate),
    ("Slice plot", vis.plot_slice),
)


def write_report(study: optuna.Study, path: str | Path) -> Path:
    """Write every figure the study's trials allow (importances need 2+ complete trials with varied params)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sections, plotly_included = [], False
    for title, plot in FIGURES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            sections.append(f"<h2>{html.escape(title)}</h2><p>not available yet: {html.escape(str(exc))}</p>")
            continue
        body = figure.to_html(full_html=False, include_plotlyjs=not plotly_included)
        plotly_included = True
        sections.append(f"<h2>{html.escape(title)}</h2>{body}")
    states = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Study {html.escape(study.study_name)}</title>"
            f"</head><body style='font-family:sans-serif'><h1>Study {html.escape(study.study_name)}</h1>"
            f"<p>{len(study.trials)} trials: {html.escape(summary)}</p>{''.join(sections)}</body></html>")
    path.write_text(page)
    return path
