"""The study file: search space, data, training control, sampler, pruner, budget, stores. Validated once.

    study:     {name, n_trials, timeout, metric, sampler, pruner, storage, tracking_uri, experiment,
                registered_model, promote, warm_start: {from, top_k, storage}, finalists: {top_k, seeds}}
    data:      see model.datasource.DataSpec (files or `synthetic: {rows: N}`)
    training:  see model.config.TrainConfig (batch_size, max_epochs, patience, ...); embedding_l2, weight_decay
               and batch_size may be tunable specs, as in the policy (tuner.space)
    policy_configs: {scoring_policy: {...}}   each hyperparameter fixed or tunable (tuner.space)
    promotion: {require: not_worse | better, alpha: 0.05}   the champion gate (DeLong's paired AUC test)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import optuna

from deepfm_tuner.model.config import TrainConfig, load_yaml
from deepfm_tuner.model.data.source import DataSpec
from deepfm_tuner.model.errors import ConfigError, did_you_mean

from deepfm_tuner.tuner.spec.space import Spec, parse_space, parse_training

SAMPLERS = ("tpe", "random", "gp", "qmc")
PRUNERS = ("median", "hyperband", "none")
METRICS = {"val_auc": "maximize", "val_logloss": "minimize"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _check_keys(given: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in given:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), allowed)}; "
                              f"allowed keys: {', '.join(allowed)}")


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    seed: int = 42
    n_startup_trials: int = 5  # random trials before TPE/GP model the space

    def __post_init__(self) -> None:
        if self.type not in SAMPLERS:
            raise ConfigError(f"study.sampler.type: unknown sampler {self.type!r}{did_you_mean(str(self.type), SAMPLERS)}; "
                              f"use one of {', '.join(SAMPLERS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"study.sampler.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.n_startup_trials, int) or self.n_startup_trials < 0:
            raise ConfigError(f"study.sampler.n_startup_trials must be an integer >= 0, got {self.n_startup_trials!r}")

    def build(self) -> optuna.samplers.BaseSampler:
        if self.type == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials, multivariate=True,
                                              constant_liar=True)
        if self.type == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.type == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.n_startup_trials)
        return optuna.samplers.QMCSampler(seed=self.seed)


@dataclass(frozen=True)
class PrunerSpec:
    """How weak trials are stopped, at each report: every epoch, or with `training.eval_every` every evaluation
    point on the validation sample (eval_every 0.25: 4 reports per epoch). median: below the median of earlier
    trials at the same report, after `n_warmup_steps` reports (epochs without eval_every; 4 = one epoch at 0.25),
    once `n_startup_trials` trials completed and `n_min_trials` trials reported that step. hyperband: brackets
    from 1 report up to all of them (max_epochs x reports per epoch); the median settings do not apply. Optuna
    takes a report's step (0-based) as the resource used, so hyperband's first rung is at the 2nd report (half an
    epoch at eval_every 0.25; the 2nd epoch without it), and which trials it compares depends on its brackets."""

    type: str = "median"
    n_startup_trials: int = 3  # trials that run to the end before pruning starts
    n_warmup_steps: int = 1  # reports a trial always gets (epochs without training.eval_every)
    n_min_trials: int = 1  # trials that must have reported a step before a trial is judged at it

    def __post_init__(self) -> None:
        if self.type not in PRUNERS:
            raise ConfigError(f"study.pruner.type: unknown pruner {self.type!r}{did_you_mean(str(self.type), PRUNERS)}; "
                              f"use one of {', '.join(PRUNERS)}")
        for name, minimum in (("n_startup_trials", 0), ("n_warmup_steps", 0), ("n_min_trials", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"study.pruner.{name} must be an integer >= {minimum}, got {value!r}")

    def build(self, max_epochs: int, reports_per_epoch: int = 1) -> optuna.pruners.BasePruner:
        """The Optuna pruner; a trial reports `reports_per_epoch` times an epoch (TrainConfig.evals_per_epoch
        with eval_every, else 1), so hyperband's resource is one report and its maximum every report."""
        if self.type == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials,
                                               n_warmup_steps=self.n_warmup_steps, n_min_trials=self.n_min_trials)
        if self.type == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs * reports_per_epoch,
                                                  reduction_factor=3)
        return optuna.pruners.NopPruner()


REQUIREMENTS = ("not_worse", "better")


@dataclass(frozen=True)
class PromotionSpec:
    """The champion gate: a challenger takes `champion` unless it is significantly worse (not_worse), or only
    when it is significantly better (better), by DeLong's two-sided paired AUC test at level `alpha`."""

    require: str = "not_worse"
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.require not in REQUIREMENTS:
            raise ConfigError(f"promotion.require: unknown requirement {self.require!r}"
                              f"{did_you_mean(str(self.require), REQUIREMENTS)}; use one of {', '.join(REQUIREMENTS)}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ConfigError(f"promotion.alpha must be a number with 0 < alpha < 1 (e.g. 0.05), got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))


@dataclass(frozen=True)
class WarmStartSpec:
    """Enqueue the `top_k` best configurations of an earlier study (`from`) when this study is created."""

    source: str
    top_k: int = 5
    storage: str | None = None  # default: this study's storage

    KEYS = ("from", "top_k", "storage")

    @classmethod
    def from_dict(cls, block: Any) -> "WarmStartSpec":
        if isinstance(block, str):
            block = {"from": block}
        if not isinstance(block, Mapping):
            raise ConfigError(f"study.warm_start must be a mapping such as {{from: OLD_STUDY, top_k: 5}}, got {block!r}")
        _check_keys(block, cls.KEYS, "study.warm_start")
        source = block.get("from")
        if not isinstance(source, str) or not NAME_PATTERN.match(source):
            raise ConfigError(f"study.warm_start.from must name an earlier study (letters, digits, '_', '.', '-'), "
                              f"got {source!r}")
        top_k = block.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"study.warm_start.top_k must be an integer >= 1, got {top_k!r}")
        storage = block.get("storage")
        if storage is not None and not isinstance(storage, str):
            raise ConfigError(f"study.warm_start.storage must be a storage URL string, got {storage!r}")
        return cls(source, top_k, storage)


@dataclass(frozen=True)
class FinalistsSpec:
    """After the trials: re-train the `top_k` best complete trials with `seeds` more seeds each and choose the
    champion candidate by the mean of those retrains (tuner.finalists). top_k 1 re-seeds the winner alone."""

    top_k: int = 3
    seeds: int = 3

    KEYS = ("top_k", "seeds")

    @classmethod
    def from_dict(cls, block: Any) -> "FinalistsSpec":
        if not isinstance(block, Mapping):
            raise ConfigError(f"study.finalists must be a mapping such as {{top_k: 3, seeds: 3}}, got {block!r}")
        _check_keys(block, cls.KEYS, "study.finalists")
        values = {key: block.get(key, getattr(cls, key)) for key in cls.KEYS}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"study.finalists.{key} must be an integer >= 1, got {value!r}")
        return cls(**values)


@dataclass(frozen=True)
class StudySpec:
    name: str
    space: Mapping[str, Spec]
    data: DataSpec
    training: TrainConfig
    n_trials: int | None = 20  # total over all workers
    timeout: float | None = None  # seconds, per worker
    metric: str = "val_auc"
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    registered_model: str | None = None
    promote: bool = True
    promotion: PromotionSpec = field(default_factory=PromotionSpec)
    warm_start: WarmStartSpec | None = None
    training_space: Mapping[str, Spec] = field(default_factory=dict)  # tuned training knobs, `training.<knob>`
    finalists: FinalistsSpec | None = None  # None: the best single trial is the champion candidate
    source: str = ""

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"deepfm-{self.name}"

    @property
    def model_name(self) -> str:
        return self.registered_model or f"deepfm-{self.name}"

    def with_overrides(self, **changes: Any) -> "StudySpec":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


STUDY_KEYS = ("name", "n_trials", "timeout", "metric", "sampler", "pruner", "storage", "tracking_uri", "experiment",
              "registered_model", "promote", "warm_start", "finalists")


def _sub(block: Any, cls, where: str, scalar_key: str = "type"):
    if block is None:
        return cls()
    if isinstance(block, str):
        block = {scalar_key: block}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where} must be a name or a mapping, got {block!r}")
    _check_keys(block, tuple(f.name for f in dataclasses.fields(cls)), where)
    return cls(**dict(block))


def parse_study(document: Any, source: str, default_name: str) -> StudySpec:
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: a study file is a mapping with 'study', 'data', 'training' and 'policy_configs'")
    _check_keys(document, ("study", "data", "training", "policy_configs", "promotion"), source)
    try:
        study = document.get("study") or {}
        if not isinstance(study, Mapping):
            raise ConfigError("study must be a mapping")
        _check_keys(study, STUDY_KEYS, "study")
        name = str(study.get("name", default_name))
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"study.name {name!r} must be letters, digits, '_', '.', '-' (max 100 characters)")
        n_trials, timeout = study.get("n_trials", 20), study.get("timeout")
        if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
            raise ConfigError(f"study.n_trials must be an integer >= 1, got {n_trials!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
            raise ConfigError(f"study.timeout must be a number of seconds > 0, got {timeout!r}")
        if n_trials is None and timeout is None:
            raise ConfigError("study: set n_trials, timeout, or both, so the study ends")
        metric = study.get("metric", "val_auc")
        if metric not in METRICS:
            raise ConfigError(f"study.metric: unknown metric {metric!r}{did_you_mean(str(metric), METRICS)}; "
                              f"use one of {', '.join(METRICS)}")
        if "data" not in document:
            raise ConfigError("missing 'data:' block; give 'data: {train: PATH}' or 'data: {synthetic: {rows: N}}'")
        policy_configs = document.get("policy_configs") or {}
        if not isinstance(policy_configs, Mapping):
            raise ConfigError("policy_configs must be a mapping with a 'scoring_policy:' entry")
        _check_keys(policy_configs, ("scoring_policy",), "policy_configs")
        for key in ("storage", "tracking_uri", "experiment", "registered_model"):
            if study.get(key) is not None and not isinstance(study[key], str):
                raise ConfigError(f"study.{key} must be a string, got {study[key]!r}")
        if study.get("registered_model") is not None:
            _check_model_name(study["registered_model"])
        promote = study.get("promote", True)
        if not isinstance(promote, bool):
            raise ConfigError(f"study.promote must be true or false, got {promote!r}")
        training, training_space = parse_training(document.get("training"))
        return StudySpec(
            name=name,
            space=parse_space(policy_configs.get("scoring_policy")),
            data=DataSpec.from_dict(document["data"]),
            training=training,
            training_space=training_space,
            n_trials=n_trials,
            timeout=timeout,
            metric=metric,
            sampler=_sub(study.get("sampler"), SamplerSpec, "study.sampler"),
            pruner=_sub(study.get("pruner"), PrunerSpec, "study.pruner"),
            storage=study.get("storage"),
            tracking_uri=study.get("tracking_uri"),
            experiment=study.get("experiment"),
            registered_model=study.get("registered_model"),
            promote=promote,
            promotion=_sub(document.get("promotion"), PromotionSpec, "promotion", scalar_key="require"),
            warm_start=None if study.get("warm_start") is None else WarmStartSpec.from_dict(study["warm_start"]),
            finalists=None if study.get("finalists") is None else FinalistsSpec.from_dict(study["finalists"]),
            source=source,
        )
    except TypeError as exc:  # e.g. a wrong type passed through to a dataclass
        raise ConfigError(f"{source}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _check_model_name(name: str) -> None:
    """MLflow's own rules for a registered model name, checked when the study is read, not after it trained."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as exc:
        raise ConfigError(f"study.registered_model {name!r} is refused by MLflow ({exc.message.splitlines()[0]}); "
                          f"pick a name such as 'deepfm-ctr'") from None


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study YAML; the study name defaults to the file's stem."""
    path = Path(path)
    return parse_study(load_yaml(path), str(path), default_name=path.stem)
