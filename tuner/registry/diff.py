"""Two registered versions side by side (`deepfm diff NAME@A NAME@B`), read from the registry alone: where each
came from (study, trial, run, registration time), what it was trained on (the data fingerprint), how it scored
(test and validation metrics, best epoch), and the V1 config and training control where they differ.

The V1 config is the version's `policy_yaml` tag (every version has it); the training control is its source run's
`training.*` params (versions registered from a study's trial or finalist retrain have them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from deepfm_tuner.tuner.registry.refs import resolve_model_version

TRAINING_PARAM = "training."
SCORE_TAGS = ("test_auc", "test_logloss")  # then every score_* and best_epoch* tag, in name order


@dataclass(frozen=True)
class VersionFacts:
    """One version as `deepfm diff` shows it: labelled facts (in display order) and its flattened config."""

    reference: str  # e.g. "ctr v3 (@champion)"
    facts: dict[str, str]
    scores: dict[str, str]
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionDiff:
    a: VersionFacts
    b: VersionFacts

    def fact_rows(self) -> list[tuple[str, str, str]]:
        return _side_by_side(self.a.facts, self.b.facts, keep_equal=True)

    def score_rows(self) -> list[tuple[str, str, str, str]]:
        """(name, a, b, b - a) for every score either has."""
        rows = []
        for key, a, b in _side_by_side(self.a.scores, self.b.scores, keep_equal=True):
            try:
                delta = f"{float(b) - float(a):+.4f}"
            except ValueError:
                delta = ""
            rows.append((key, a, b, delta))
        return rows

    def config_rows(self) -> list[tuple[str, str, str]]:
        """The V1 config and training keys whose values differ."""
        return _side_by_side(self.a.config, self.b.config, keep_equal=False)


def diff_versions(client: MlflowClient, reference_a: str, reference_b: str) -> VersionDiff:
    """The two versions the references name (NAME@alias, NAME/VERSION, NAME@VERSION), compared."""
    return VersionDiff(_facts(client, reference_a), _facts(client, reference_b))


def _facts(client: MlflowClient, reference: str) -> VersionFacts:
    mv = resolve_model_version(reference, client)
    mv = client.get_model_version(mv.name, mv.version)  # with its aliases
    tags = mv.tags or {}
    aliases = " ".join(f"@{a}" for a in sorted(mv.aliases or []))
    label = f"{mv.name} v{mv.version}" + (f" ({aliases})" if aliases else "")
    created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
    facts = {"study": tags.get("study", ""), "trial": tags.get("trial_number", ""),
             "chosen by": tags.get("chosen_by", "best trial" if tags.get("trial_number") else ""),
             "run": mv.run_id or "", "registered": f"{created} UTC",
             "data fingerprint": tags.get("data_fingerprint", "")}
    scores = {k: tags[k] for k in SCORE_TAGS if k in tags}
    scores.update({k: tags[k] for k in sorted(tags) if k.startswith(("score_", "best_epoch")) and tags[k]})
    config = _flatten(yaml.safe_load(tags.get("policy_yaml") or "{}") or {})
    config = {k.removeprefix("policy_configs.scoring_policy."): v for k, v in config.items()}
    config.update(_training_params(client, mv.run_id))
    return VersionFacts(label, facts, scores, config)


def _training_params(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    if not run_id:
        return {}
    try:
        params = client.get_run(run_id).data.params
    except MlflowException:  # the run was deleted: the V1 config still compares
        return {}
    return {k: v for k, v in sorted(params.items()) if k.startswith(TRAINING_PARAM) and v not in ("", "None")}


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.removesuffix("."): json.dumps(node) if isinstance(node, (list, bool)) or node is None
            else str(node)}


def _side_by_side(a: dict[str, str], b: dict[str, str], *, keep_equal: bool) -> list[tuple[str, str, str]]:
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k, "-"), b.get(k, "-")) for k in keys if keep_equal or a.get(k) != b.get(k)]
