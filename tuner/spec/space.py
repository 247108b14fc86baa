"""The search space: each V1 hyperparameter is a fixed value or a tunable spec; unset ones get a default range.

    embedding_dim: 16                                   # fixed
    embedding_dim: {choices: [8, 16, 32]}               # categorical
    dropout: {low: 0.0, high: 0.5, step: 0.05}          # float range (optional step or log)
    learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
    deep_hidden_units: {choices: [[128, 64, 32], [256, 128]]}
    deep_hidden_units: {depth: [1, 3], width: [32, 256]}   # depth x per-layer width (log scale)
    learning_rate: {type: tunable_float, min: 1.0e-4, max: 1.0e-2}   # Shaped's spelling of a range
    embedding_dim: {type: tunable_int, min: 8, max: 32}

The study's `training:` block tunes three training knobs the same way (each unset one stays fixed at its value):

    embedding_l2: {low: 1.0e-5, high: 0.1, log: true, zero: true}   # log-uniform, or exactly 0
    weight_decay: tune                                              # its default range (TRAINING_DEFAULTS)
    batch_size: {choices: [1024, 4096]}

A training knob's Optuna parameter is `training.<name>`, as its MLflow param.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

import optuna

from deepfm_tuner.model.config import ACTIVATIONS, PolicyConfig, TrainConfig
from deepfm_tuner.model.errors import ConfigError, did_you_mean

HYPERPARAMETERS = ("embedding_dim", "deep_hidden_units", "activation_fn", "dropout", "learning_rate")
INTEGER_PARAMS = ("embedding_dim", "batch_size")
FLOAT_PARAMS = ("dropout", "learning_rate")
TRAINING_TUNABLE = ("embedding_l2", "weight_decay", "batch_size")  # the training knobs a study may tune
TRAINING_PREFIX = "training."
SHAPED_TYPES = {"tunable_float": False, "tunable_int": True}  # Shaped's spelling -> integer?


@dataclass(frozen=True)
class Fixed:
    value: Any

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return self.value


@dataclass(frozen=True)
class Choices:
    values: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if isinstance(self.values[0], (list, tuple)):  # Optuna choices must be scalars: encode layer lists
            labels = [layers_label(v) for v in self.values]
            return layers_from_label(trial.suggest_categorical(name, labels))
        return trial.suggest_categorical(name, list(self.values))


@dataclass(frozen=True)
class Range:
    """low..high (optionally on a log scale or a step grid). `zero`: exactly 0 is a candidate too, chosen by a
    companion yes/no parameter `<name>.zero`, so "no penalty at all" competes with every log-scale strength
    (a log range cannot reach 0). Both parameters are always asked, which keeps the space static for TPE."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False
    zero: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.integer:
            value = trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        else:
            value = trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)
        if self.zero and trial.suggest_categorical(zero_param(name), [False, True]):
            return 0 if self.integer else 0.0
        return value


@dataclass(frozen=True)
class Layers:
    """Depth in [depth_low, depth_high], each layer's width in [width_low, width_high] (log scale)."""

    depth: tuple[int, int]
    width: tuple[int, int]

    def suggest(self, trial: optuna.Trial, name: str) -> tuple[int, ...]:
        depth = trial.suggest_int(f"{name}.depth", *self.depth)
        return tuple(trial.suggest_int(f"{name}.l{i}", *self.width, log=True) for i in range(depth))


Spec = Union[Fixed, Choices, Range, Layers]

def zero_param(name: str) -> str:
    return f"{name}.zero"


def shown_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's params as people read them: a range's `<name>.zero` companion folded into `<name>` (0 when it
    said yes), so a line never shows a strength that was not applied."""
    shown = {k: v for k, v in params.items() if not k.endswith(".zero")}
    for key, value in params.items():
        if key.endswith(".zero") and key.removesuffix(".zero") in shown and value is True:
            shown[key.removesuffix(".zero")] = 0
    return shown


DEFAULT_SPACE: dict[str, Spec] = {
    "embedding_dim": Choices((8, 16, 32)),
    "deep_hidden_units": Choices(((64, 32), (128, 64, 32), (256, 128, 64), (256, 256))),
    "activation_fn": Choices(("relu", "leaky_relu", "gelu", "silu")),
    "dropout": Range(0.0, 0.5, step=0.05),
    "learning_rate": Range(1e-4, 1e-2, log=True),
}


# `training: {<knob>: tune}`: the default range of each tunable training knob. embedding_l2: BARS/FuxiCTR tune the
# embedding regulariser over 0 and 1e-4..1e-1 on a log grid; measured with this project's per-batch penalty
# (bench/embedding_l2.py, BENCHMARKS.md "embedding_l2"), 1e-5..1e-3 is within seed noise of 0, 1e-2..1e-1 costs
# or gains up to a few 1e-3 AUC depending on the data, and 0.3 or more zeroes the embeddings (AUC collapses), so
# 0 or 1e-5..1e-1. weight_decay (on the MLP, through Adam): 0 or 1e-7..1e-3. batch_size: the sizes CTR benchmarks
# use; larger batches train faster per sample on CPU and often want a larger learning rate.
TRAINING_DEFAULTS: dict[str, Spec] = {
    "embedding_l2": Range(1e-5, 1e-1, log=True, zero=True),
    "weight_decay": Range(1e-7, 1e-3, log=True, zero=True),
    "batch_size": Choices((1024, 2048, 4096, 8192)),
}


def layers_label(units) -> str:
    return "-".join(str(int(u)) for u in units)


def layers_from_label(label: str) -> tuple[int, ...]:
    return tuple(int(u) for u in str(label).split("-"))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def _pair(value: Any, where: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"{where} must be [low, high] with positive integers, got {value!r}")
    if value[0] > value[1]:
        raise ConfigError(f"{where}: low {value[0]} > high {value[1]}; swap them")
    return int(value[0]), int(value[1])


def _from_shaped(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Shaped's `{type: tunable_float | tunable_int, min, max}` -> this module's `{low, high}` (log/step kept)."""
    kind = raw["type"]
    if kind not in SHAPED_TYPES:
        raise ConfigError(f"{where}.type: unknown type {kind!r}{did_you_mean(str(kind), SHAPED_TYPES)}; "
                          f"use {' or '.join(SHAPED_TYPES)} (or low/high, or choices)")
    _only(raw, ("type", "min", "max", "log", "step"), where)
    if not {"min", "max"} <= set(raw):
        raise ConfigError(f"{where}: {kind} needs both 'min' and 'max'")
    for bound in ("min", "max"):
        if SHAPED_TYPES[kind] and not (isinstance(raw[bound], int) and not isinstance(raw[bound], bool)):
            raise ConfigError(f"{where}.{bound}: {kind} takes integers, got {raw[bound]!r}; use tunable_float")
    converted = {"low": raw["min"], "high": raw["max"], **{k: raw[k] for k in ("log", "step") if k in raw}}
    return converted


def parse_spec(name: str, raw: Any, block: str = "scoring_policy") -> Spec:
    """One hyperparameter's entry -> a validated Spec; every value it can produce is valid (checked through
    PolicyConfig for the `scoring_policy` block, TrainConfig for `training`)."""
    where = f"{block}.{name}"
    if not isinstance(raw, Mapping):
        spec: Spec = Fixed(tuple(raw) if name == "deep_hidden_units" and isinstance(raw, list) else raw)
        _check_values(name, [spec.value], where)
        return spec
    if "type" in raw:
        raw = _from_shaped(raw, where)
    keys = set(raw)
    if "choices" in keys:
        _only(raw, ("choices",), where)
        values = raw["choices"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.choices must be a non-empty list, got {values!r}")
        if name == "deep_hidden_units":
            values = [tuple(v) if isinstance(v, list) else v for v in values]
        _check_values(name, values, where)
        return Choices(tuple(values))
    if name == "deep_hidden_units":
        _only(raw, ("depth", "width"), where)
        if keys != {"depth", "width"}:
            raise ConfigError(f"{where}: give either 'choices: [[...], ...]' or both 'depth: [lo, hi]' and 'width: [lo, hi]'")
        return Layers(_pair(raw["depth"], f"{where}.depth"), _pair(raw["width"], f"{where}.width"))
    if name == "activation_fn":
        raise ConfigError(f"{where}: activations are tuned with 'choices: [relu, gelu, ...]', not a range")
    allowed = ("low", "high", "log", "step", "zero") if block == "training" else ("low", "high", "log", "step")
    _only(raw, allowed, where)
    if not {"low", "high"} <= keys:
        raise ConfigError(f"{where}: a range needs both 'low' and 'high' (or use 'choices: [...]')")
    low, high = _number(raw["low"], f"{where}.low"), _number(raw["high"], f"{where}.high")
    if low > high:
        raise ConfigError(f"{where}: low {low} > high {high}; swap them")
    log, step = raw.get("log", False), raw.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false, got {log!r}")
    if step is not None and (_number(step, f"{where}.step") <= 0):
        raise ConfigError(f"{where}.step must be > 0, got {step}")
    if log and step is not None:
        raise ConfigError(f"{where}: 'log' and 'step' cannot be combined (Optuna does not support it); drop one")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    zero = raw.get("zero", False)
    if not isinstance(zero, bool):
        raise ConfigError(f"{where}.zero must be true or false, got {zero!r}")
    integer = name in INTEGER_PARAMS
    if integer and not all(float(v).is_integer() for v in (low, high)):
        raise ConfigError(f"{where}: {name} is an integer; use integer low/high, got {low}, {high}")
    _check_values(name, [low, high], where)
    return Range(low, high, log=log, step=step, integer=integer, zero=zero)


def _only(raw: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}")


def _check_values(name: str, values: list[Any], where: str) -> None:
    """Validate candidate values through PolicyConfig (TrainConfig) itself, so the space can never yield an
    invalid policy (training control)."""
    config, prefix = (TrainConfig, "training") if name in TRAINING_TUNABLE else (PolicyConfig, "scoring_policy")
    for value in values:
        if name == "activation_fn" and value not in ACTIVATIONS:
            raise ConfigError(f"{where}: unknown activation {value!r}{did_you_mean(str(value), ACTIVATIONS)}; "
                              f"supported: {', '.join(ACTIVATIONS)}")
        try:
            config(**{name: value})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).removeprefix(f'{prefix}.{name} ')}") from None


def parse_space(block: Mapping[str, Any] | None) -> dict[str, Spec]:
    """The `scoring_policy` block of a study file -> one Spec per hyperparameter (defaults for unset ones)."""
    block = dict(block or {})
    policy_type = block.pop("policy_type", "deepfm")
    if policy_type != "deepfm":
        raise ConfigError(f"scoring_policy.policy_type: unknown policy type {policy_type!r}; supported: deepfm")
    for key in block:
        if key not in HYPERPARAMETERS:
            raise ConfigError(f"scoring_policy: unknown key '{key}'{did_you_mean(str(key), HYPERPARAMETERS)}; "
                              f"allowed keys: policy_type, {', '.join(HYPERPARAMETERS)}")
    return {name: parse_spec(name, block[name]) if name in block else DEFAULT_SPACE[name] for name in HYPERPARAMETERS}


def parse_training(block: Mapping[str, Any] | None) -> tuple[TrainConfig, dict[str, Spec]]:
    """The study's `training:` block -> (the fixed training control, a Spec per tuned knob keyed by its Optuna
    parameter name `training.<knob>`). A tuned knob keeps its TrainConfig default in the fixed control (what
    the V1 baseline trial trains with)."""
    if block is not None and not isinstance(block, Mapping):
        raise ConfigError(f"training must be a mapping, got {type(block).__name__}")
    fixed: dict[str, Any] = {}
    tuned: dict[str, Spec] = {}
    for name, raw in (block or {}).items():
        if not (isinstance(raw, Mapping) or raw == "tune"):
            fixed[name] = raw
        elif name not in TRAINING_TUNABLE:
            raise ConfigError(f"training.{name} is not tunable; give one value (tunable training knobs: "
                              f"{', '.join(TRAINING_TUNABLE)})")
        elif raw == "tune":
            tuned[TRAINING_PREFIX + name] = TRAINING_DEFAULTS[name]
        else:
            tuned[TRAINING_PREFIX + name] = parse_spec(name, raw, block="training")
    return TrainConfig.from_dict(fixed), tuned


def suggest_policy(trial: optuna.Trial, space: Mapping[str, Spec]) -> PolicyConfig:
    """Ask the trial for every tunable hyperparameter; fixed ones are taken as they are."""
    return PolicyConfig(**{name: spec.suggest(trial, name) for name, spec in space.items()})


def tuned_training(control: TrainConfig, training_space: Mapping[str, Spec]) -> dict[str, Any]:
    """The tuned knobs' values in `control`, by knob name (embedding_l2, ...)."""
    return {name.removeprefix(TRAINING_PREFIX): getattr(control, name.removeprefix(TRAINING_PREFIX))
            for name in training_space}


def suggest_training(trial: optuna.Trial, training_space: Mapping[str, Spec], control: TrainConfig) -> TrainConfig:
    """`control` with each tuned training knob replaced by the trial's suggestion."""
    if not training_space:
        return control
    return control.replace(**{name.removeprefix(TRAINING_PREFIX): spec.suggest(trial, name)
                              for name, spec in training_space.items()})


def policy_from_params(params: Mapping[str, Any], space: Mapping[str, Spec]) -> PolicyConfig:
    """Rebuild a trial's policy from its stored Optuna params (for status, promotion, retries)."""
    fixed = optuna.trial.FixedTrial(dict(params))
    return suggest_policy(fixed, space)  # type: ignore[arg-type]


def space_to_dict(space: Mapping[str, Spec]) -> dict[str, Any]:  # also takes a training space
    """A readable description of the space, logged on the study's parent run."""
    def describe(spec: Spec) -> Any:
        if isinstance(spec, Fixed):
            return list(spec.value) if isinstance(spec.value, tuple) else spec.value
        if isinstance(spec, Choices):
            return {"choices": [list(v) if isinstance(v, tuple) else v for v in spec.values]}
        if isinstance(spec, Layers):
            return {"depth": list(spec.depth), "width": list(spec.width)}
        described = {"low": spec.low, "high": spec.high}
        if spec.log:
            described["log"] = True
        if spec.step is not None:
            described["step"] = spec.step
        if spec.zero:
            described["zero"] = True
        return described
    return {name: describe(spec) for name, spec in space.items()}


class _ParamCheck:
    """Stands in for an optuna.Trial: answers each suggest_* with the candidate's value when the new space holds
    it (recorded in `accepted`), else with a valid stand-in (the candidate's value goes to `rejected`)."""

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)
        self.accepted: dict[str, Any] = {}
        self.rejected: dict[str, Any] = {}

    def _take(self, name: str, distribution, fallback: Any) -> Any:
        if name not in self.params:
            return fallback
        value = self.params[name]
        try:
            ok = bool(distribution._contains(distribution.to_internal_repr(value)))
        except (ValueError, TypeError):
            ok = False
        if ok:
            self.accepted[name] = value
            return value
        self.rejected[name] = value
        return fallback

    def suggest_categorical(self, name, choices):
        return self._take(name, optuna.distributions.CategoricalDistribution(choices), choices[0])

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._take(name, optuna.distributions.IntDistribution(low, high, log=log, step=step), low)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._take(name, optuna.distributions.FloatDistribution(low, high, log=log, step=step), low)


def check_params(params: Mapping[str, Any], space: Mapping[str, Spec],
                 training_space: Mapping[str, Spec] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split stored Optuna params into (valid in `space` and `training_space`, not valid: out of range, or not a
    tunable parameter of them). Conditional parameters (a depth's layer widths) are judged as the space would
    ask for them."""
    check = _ParamCheck(params)
    suggest_policy(check, space)  # type: ignore[arg-type]
    suggest_training(check, training_space or {}, TrainConfig())  # type: ignore[arg-type]
    unused = {k: v for k, v in params.items() if k not in check.accepted and k not in check.rejected}
    return check.accepted, {**check.rejected, **unused}
