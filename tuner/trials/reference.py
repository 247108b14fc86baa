"""A tree-model reference on the study's own split (`study.reference: lightgbm`): did DeepFM earn its keep?

The DeepFM policy page itself says to choose a tree model when the features are simple. Once the trials have ended
(in the process that summarises the study, as the finalists do), LightGBM is trained once on the encoded train rows
the trials used, early-stopped on their validation rows, and scored on the test rows promotion scores the champion
on; promotion compares the two there (DeLong, as the gate: tuner.pipeline.promotion).

Features, one column each, from the encoded dataset (model.data.encoder), so both models see the same values:
    categorical field    its code as a number: 0 missing, 1 rare or unseen, 2.. the vocabulary by descending
                         training frequency, so a split separates frequent values from rare ones (count encoding)
    multi-valued field   its first token's code and its number of tokens: trees take one value per column
    numeric field        the encoded value (standardised, clipped at +-10, NaN when missing): trees are blind to the
                         scaling, and LightGBM routes NaN itself
Codes as numbers, not LightGBM categoricals: on the 1M-row synthetic set (fields up to 64k values) LightGBM's own
categorical splits overfit early (validation AUC 0.597, best after 84 rounds, against 0.662 with codes;
BENCHMARKS.md). A study can still ask for them by column name, through LightGBM's own parameter:
`params: {categorical_feature: "C9,C18"}`.
LightGBM's settings: DEFAULTS, the study's training seed and threads, then `study.reference.params` under any of
LightGBM's own names or aliases (`n_estimators: 500` replaces the default `num_iterations`); a name LightGBM does
not know is refused when the study starts, before any trial.

Recorded for later readers (promotion, a resume):
    study user attr `reference`   {key: {type, params, seed, data_fingerprint}, type, run_id, model
                                   (runs:/ID/reference), val_auc, val_logloss, test_auc, test_logloss,
                                   best_iteration, train_seconds}
    the reference run             nested under the parent run, tag deepfm.role=reference; params: LightGBM's; metrics
                                  score_<metric>, val_auc, val_logloss, test_auc, test_logloss, best_iteration,
                                  train_seconds; artifacts reference/ (model.txt, encoder.json, reference.json)
    parent run                    metrics reference_val_auc, reference_test_auc, reference_train_seconds; tag
                                  deepfm.reference_run_id

Resume: a study resumed with the same reference, seed and data trains nothing; a failed reference (recorded on its
run, never failing the study) is trained again. Processes summarising one study take turns under a lock on its
storage, so the reference trains once.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfm_tuner.model.data.encoder import MISSING, EncodedFeatures, FeatureEncoder
from deepfm_tuner.model.data.frames import check_labels
from deepfm_tuner.model.errors import ConfigError, DataError, did_you_mean
from deepfm_tuner.model.metrics import classification_metrics
from deepfm_tuner.tuner.spec.study import ReferenceSpec
from deepfm_tuner.tuner.stores.locks import creation_lock
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.trials.names import ATTR_REFERENCE, TAG_REFERENCE_RUN, TAG_STATE, score_name
from deepfm_tuner.tuner.trials.runs import close_orphan_runs, download_checkpoint, run_tags, training_run

ROLE = "reference"
ARTIFACT = "reference"  # the run's folder: model.txt, encoder.json, reference.json
DEFAULTS: dict[str, Any] = {"objective": "binary", "metric": "auc", "num_leaves": 63, "learning_rate": 0.05,
                            "num_iterations": 1000, "early_stopping_round": 50, "verbosity": -1}
PARAMETERS_PAGE = "https://lightgbm.readthedocs.io/en/latest/Parameters.html"
FLOAT32_EXACT = 1 << 24  # codes up to this are exact in float32; a larger vocabulary takes float64 columns
NAMES = {"lightgbm": "LightGBM"}  # each reference type as people write it


@dataclass(frozen=True)
class ReferenceResult:
    """The trained reference as recorded: its run, its scores on the validation and test rows, its cost."""

    type: str
    run_id: str
    model: str  # runs:/ID/reference
    val_auc: float
    val_logloss: float
    test_auc: float | None  # None when the dataset has no test rows
    test_logloss: float | None
    best_iteration: int
    train_seconds: float
    trained: bool = True  # False: found recorded (a resume), nothing trained

    def line(self) -> str:
        """'reference: LightGBM val AUC 0.7512, test AUC 0.7498 (412 rounds, 12.3 s)'."""
        test = "" if self.test_auc is None else f", test AUC {self.test_auc:.4f}"
        return (f"reference: {NAMES[self.type]} val AUC {self.val_auc:.4f}{test} ({self.best_iteration} rounds, "
                f"{self.train_seconds:.1f} s{'' if self.trained else ', recorded earlier'})")


def _lightgbm():
    try:
        import lightgbm  # here, not at the top: ~1 s (it imports scikit-learn), and only a reference needs it
    except ImportError:
        raise ConfigError("study.reference: LightGBM is not installed; pip install 'deepfm-tuner[reference]' "
                          "(scripts/setup.sh installs it), or remove study.reference") from None
    return lightgbm


def lightgbm_params(reference: ReferenceSpec, seed: int, threads: int | None) -> dict[str, Any]:
    """DEFAULTS, the seed and threads, then the study's `params`, each under LightGBM's main name (so an alias
    replaces the default it names); a name LightGBM does not know is one ConfigError line."""
    lightgbm = _lightgbm()
    aliases = lightgbm.basic._ConfigAliases._get_all_param_aliases()  # its own table (C API LGBM_DumpParamAliases)
    main = {alias: name for name, names in aliases.items() for alias in (name, *names)}
    params = {**DEFAULTS, "seed": seed, **({"num_threads": threads} if threads else {})}
    for key, value in reference.params.items():
        if key not in main:
            hint = did_you_mean(key, list(aliases)) or did_you_mean(key, list(main))  # a main name first
            raise ConfigError(f"study.reference.params: unknown LightGBM parameter '{key}'{hint}; "
                              f"see {PARAMETERS_PAGE}")
        params[main[key]] = value
    return params


def check_reference(spec) -> None:
    """Fail before any trial when the study's reference cannot be trained as written (LightGBM missing, a
    parameter name it does not know)."""
    if spec.reference is not None:
        lightgbm_params(spec.reference, spec.training.seed, None)


# -- the features ----------------------------------------------------------------------------------------------
def feature_names(encoder: FeatureEncoder) -> list[str]:
    """The columns of `feature_matrix`: each field's name; a multi-valued field's NAME.first and NAME.tokens."""
    s = encoder.schema
    return [*s.categorical, *(f"{c}{part}" for c in s.multivalued for part in (".first", ".tokens")), *s.numeric]


def feature_matrix(encoder: FeatureEncoder, features: EncodedFeatures) -> np.ndarray:
    """Encoded rows as one (N, columns) matrix in `feature_names`' order (see the module's docstring)."""
    s = encoder.schema
    widest = max([*encoder.categorical_dims, *encoder.multivalued_dims, 0])
    out = np.empty((len(features), len(feature_names(encoder))),
                   dtype=np.float32 if widest <= FLOAT32_EXACT else np.float64)
    out[:, :len(s.categorical)] = features.categorical
    column, start = len(s.categorical), 0
    for width in encoder.multivalued_lengths:
        block = features.multivalued[:, start:start + width]
        out[:, column] = block[:, 0]
        out[:, column + 1] = (block > MISSING).sum(axis=1)  # -1 pads, 0 is a missing token
        column, start = column + 2, start + width
    out[:, column:] = features.numeric
    return out


# -- training, once per study ----------------------------------------------------------------------------------
def recorded(study) -> dict[str, Any] | None:
    record = study.user_attrs.get(ATTR_REFERENCE)
    return record if isinstance(record, dict) else None


def _result(record: dict[str, Any], trained: bool) -> ReferenceResult:
    return ReferenceResult(**{k: record[k] for k in ReferenceResult.__dataclass_fields__ if k != "trained"},
                           trained=trained)


def run_reference(handle, prepared, *, threads: int | None = None,
                  log: Callable[[str], None] = lambda message: None) -> ReferenceResult | None:
    """Train the study's reference once (nothing when it is recorded for the same settings and data); None when
    the study has none, or it failed (the failure is on its run and in `log`: a reference never fails a study)."""
    spec, study = handle.spec, handle.study
    if spec.reference is None:
        return None
    params = lightgbm_params(spec.reference, spec.training.seed, threads or spec.training.threads)
    key = {"type": spec.reference.type, "params": dict(spec.reference.params), "seed": spec.training.seed,
           "data_fingerprint": prepared.fingerprint}
    # processes summarising one study (team mode) take turns: the second finds the reference recorded
    with creation_lock(handle.storage_url, f"deepfm-reference-{spec.name}", f".{spec.name}.reference-lock"):
        close_orphan_runs(handle.tracker, handle.parent_run_id, ROLE)  # one left RUNNING: its process died
        record = recorded(study)
        if record is not None and record.get("key") == key:
            return _result(record, trained=False)
        train, val = len(prepared.parts["train"]), len(prepared.parts["val"])
        log(f"reference: training {NAMES[spec.reference.type]} on the trials' {train:,} train rows, early-stopped "
            f"on their {val:,} validation rows")
        record = _train_run(handle, prepared, params, key, log)
        if record is None:
            return None
        retry(study.set_user_attr, ATTR_REFERENCE, record)
        metrics = {"reference_val_auc": record["val_auc"], "reference_train_seconds": record["train_seconds"],
                   **({} if record["test_auc"] is None else {"reference_test_auc": record["test_auc"]})}
        handle.tracker.log_summary(handle.parent_run_id, metrics, tags={TAG_REFERENCE_RUN: record["run_id"]})
        return _result(record, trained=True)


def _train_run(handle, prepared, params: dict[str, Any], key: dict[str, Any],
               log: Callable[[str], None]) -> dict[str, Any] | None:
    """Train, score and save the reference as its own nested run; its record, or None when it failed."""
    spec, tracker = handle.spec, handle.tracker
    tags = {"deepfm.reference_type": spec.reference.type, **run_tags(prepared.fingerprint, spec.training.seed)}
    with training_run(tracker, handle.parent_run_id, f"reference-{spec.reference.type}", ROLE, params, tags,
                      interrupted=("KILLED", "KILLED")) as run:
        try:
            booster, seconds = train_lightgbm(prepared, params)
            best = booster.best_iteration or booster.current_iteration()
            encoder = prepared.encoder
            val = prepared.parts["val"]
            val_auc, val_logloss = classification_metrics(
                val.labels, booster.predict(feature_matrix(encoder, val.features), num_iteration=best))
            test_auc = test_logloss = None
            try:
                test_frame = prepared.test_frame()
            except DataError:  # no test rows: nothing to compare the champion with either
                test_frame = None
            if test_frame is not None:
                labels = check_labels(test_frame, encoder.schema.label, "test rows")
                test_auc, test_logloss = classification_metrics(labels, predict(booster, encoder, test_frame))
            record = {"key": key, "type": spec.reference.type, "run_id": run.run_id,
                      "model": f"runs:/{run.run_id}/{ARTIFACT}", "val_auc": val_auc, "val_logloss": val_logloss,
                      "test_auc": test_auc, "test_logloss": test_logloss, "best_iteration": int(best),
                      "train_seconds": seconds}
            metrics = {score_name(spec.metric): val_auc if spec.metric == "val_auc" else val_logloss,
                       **{k: record[k] for k in ("val_auc", "val_logloss", "test_auc", "test_logloss",
                                                 "best_iteration", "train_seconds") if record[k] is not None}}
            tracker.log_summary(run.run_id, metrics, tags={TAG_STATE: "COMPLETE"})
            _save(tracker, run.run_id, booster, best, encoder, {**record, "params": params})
            run.finished()
            return record
        except Exception as exc:  # noqa: BLE001 - recorded on the run; the study's result stands without it
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
            run.fail(reason)
            log(f"reference: failed ({reason[:300]}); the study goes on without it")
            return None


def train_lightgbm(prepared, params: dict[str, Any]):
    """(LightGBM booster early-stopped on the validation rows, seconds from the feature matrix to the last round)."""
    lightgbm = _lightgbm()
    encoder = prepared.encoder
    params, names = dict(params), feature_names(encoder)
    categorical = _columns(params.pop("categorical_feature", ""), names)  # LightGBM takes names from the Dataset
    train, val = prepared.parts["train"], prepared.parts["val"]
    started = time.perf_counter()
    train_set = lightgbm.Dataset(feature_matrix(encoder, train.features), label=train.labels, feature_name=names,
                                 categorical_feature=categorical or "auto")
    val_set = lightgbm.Dataset(feature_matrix(encoder, val.features), label=val.labels, reference=train_set)
    booster = lightgbm.train(params, train_set, valid_sets=[val_set], valid_names=["val"])
    return booster, time.perf_counter() - started


def _columns(value: Any, names: list[str]) -> list[str]:
    """`categorical_feature: "C9,C18"` (or LightGBM's "name:C9,C18") as column names, each one of `names`."""
    wanted = [c.strip() for c in str(value).removeprefix("name:").split(",") if c.strip()]
    for column in wanted:
        if column not in names:
            raise ConfigError(f"study.reference.params.categorical_feature: no feature column '{column}'"
                              f"{did_you_mean(column, names)}; the columns are {', '.join(names)}")
    return wanted


def _save(tracker, run_id: str, booster, best: int, encoder: FeatureEncoder, summary: dict[str, Any]) -> None:
    """The model (its best rounds only), the encoder that made its features, and what it is, as the run's folder."""
    with tempfile.TemporaryDirectory(prefix="deepfm-reference-") as tmp:
        folder = Path(tmp) / ARTIFACT
        folder.mkdir()
        booster.save_model(str(folder / "model.txt"), num_iteration=best)
        encoder.save(folder / "encoder.json")
        (folder / "reference.json").write_text(json.dumps(
            {**{k: v for k, v in summary.items() if k != "key"}, "features": feature_names(encoder)}, indent=2,
            default=str))
        tracker.log_artifact(run_id, folder)


# -- scoring raw rows (promotion) ----------------------------------------------------------------------------
def predict(booster, encoder: FeatureEncoder, frame: pd.DataFrame) -> np.ndarray:
    """Click probabilities of raw rows, encoded exactly as for training."""
    features = encoder.transform(frame, source="reference scoring")
    return np.asarray(booster.predict(feature_matrix(encoder, features)), dtype=np.float64).reshape(-1)


def reference_scores(tracking_uri: str, record: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """The recorded reference's probabilities on raw rows (promotion's test rows), from its run's artifacts."""
    lightgbm = _lightgbm()
    with tempfile.TemporaryDirectory(prefix="deepfm-reference-") as tmp:
        folder = download_checkpoint(tracking_uri, record["model"], Path(tmp))
        booster = lightgbm.Booster(model_file=str(folder / "model.txt"))
        return predict(booster, FeatureEncoder.load(folder / "encoder.json"), frame)
