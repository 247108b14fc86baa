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
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Mapping, Optional, Union

from annotated_types import Gt, MinLen
from pydantic import AfterValidator, Strict, model_validator, with_config
from typing_extensions import TypedDict

from deepfm_tuner.model.config import PolicyConfig, PolicyType, TrainConfig
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.model.validation import CONFIG, Bool, Must, Number, OneOf, check_field, declared, must, parse, refuse

if TYPE_CHECKING:  # Optuna is imported by the code that suggests or checks; reading a study file does not
    import optuna

HYPERPARAMETERS = ("embedding_dim", "deep_hidden_units", "activation_fn", "dropout", "learning_rate")
INTEGER_PARAMS = ("embedding_dim", "batch_size")
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


# -- the entries a study file writes, declared; parse_spec turns them into Specs -----------------------------
def _positive(step: float) -> float:
    if step <= 0:
        raise must("must be > 0")
    return step


Step = Optional[Annotated[Number, AfterValidator(_positive)]]  # an integer knob's step stays an integer


@declared()
class RangeEntry:
    """`{low, high, log, step}` of a hyperparameter."""

    low: Number
    high: Number
    log: Bool = False
    step: Step = None

    MISSING: ClassVar[str] = "a range needs both 'low' and 'high' (or use 'choices: [...]')"

    @model_validator(mode="after")
    def _sound(self) -> "RangeEntry":
        if self.low > self.high:
            raise refuse(f"low {self.low} > high {self.high}; swap them")
        if self.log and self.step is not None:
            raise refuse("'log' and 'step' cannot be combined (Optuna does not support it); drop one")
        if self.log and self.low <= 0:
            raise refuse(f"a log range needs low > 0, got {self.low}")
        return self


@declared()
class KnobRange(RangeEntry):
    """A training knob's range: `zero: true` makes exactly 0 a candidate too (see Range)."""

    zero: Bool = False


@declared()
class ShapedEntry:
    """Shaped's spelling of a range: `{type: tunable_float | tunable_int, min, max}` (log and step as ours)."""

    type: Annotated[str, OneOf("type", tuple(SHAPED_TYPES), fix="use tunable_float or tunable_int (or low/high, "
                                                                  "or choices)")]
    min: Number
    max: Number
    log: Bool = False
    step: Step = None

    MISSING: ClassVar[str] = "tunable_float and tunable_int need both 'min' and 'max'"

    @model_validator(mode="after")
    def _integers_for_tunable_int(self) -> "ShapedEntry":
        for bound in ("min", "max"):
            if SHAPED_TYPES[self.type] and not isinstance(getattr(self, bound), int):
                raise refuse(f"{self.type} takes integers, got {bound} {getattr(self, bound)!r}; use tunable_float")
        return self

    def as_range(self) -> dict[str, Any]:
        return {"low": self.min, "high": self.max, "log": self.log, "step": self.step}


@declared()
class ChoicesEntry:
    choices: Annotated[list[Any], MinLen(1), Must("must be a non-empty list")]


def _ordered(pair: tuple[int, int]) -> tuple[int, int]:
    if pair[0] > pair[1]:
        raise refuse(f"low {pair[0]} > high {pair[1]}; swap them")
    return pair


Pair = Annotated[tuple[Annotated[int, Strict(), Gt(0)], Annotated[int, Strict(), Gt(0)]],
                 Must("must be [low, high] with positive integers"), AfterValidator(_ordered)]


@declared()
class LayersEntry:
    """`{depth: [lo, hi], width: [lo, hi]}` of deep_hidden_units."""

    depth: Pair
    width: Pair

    MISSING: ClassVar[str] = "give either 'choices: [[...], ...]' or both 'depth: [lo, hi]' and 'width: [lo, hi]'"


@with_config(CONFIG)
class PolicyBlock(TypedDict, total=False):
    """A study's `scoring_policy:`: the V1 keys, each a value or a tunable entry (parse_spec)."""

    policy_type: PolicyType
    embedding_dim: Any
    deep_hidden_units: Any
    activation_fn: Any
    dropout: Any
    learning_rate: Any


def parse_spec(name: str, raw: Any, block: str = "scoring_policy") -> Spec:
    """One hyperparameter's entry -> a Spec; every value it can produce is valid (each candidate is checked as
    PolicyConfig's field for the `scoring_policy` block, TrainConfig's for `training`). `block` is the entry's
    key path in the file."""
    where = f"{block}.{name}"
    if not isinstance(raw, Mapping):
        return Fixed(_candidate(name, raw, where))
    if "type" in raw:
        raw = parse(ShapedEntry, raw, where).as_range()
    if "choices" in raw:
        return Choices(tuple(_candidate(name, value, where) for value in parse(ChoicesEntry, raw, where).choices))
    if name == "deep_hidden_units":
        layers = parse(LayersEntry, raw, where)
        _candidate(name, (layers.width[1],), where)  # the widest layer it can draw is a valid width
        return Layers(layers.depth, layers.width)
    if name == "activation_fn":
        raise ConfigError(f"{where}: activations are tuned with 'choices: [relu, gelu, ...]', not a range")
    entry = parse(KnobRange if name in TRAINING_TUNABLE else RangeEntry, raw, where)
    for bound in (entry.low, entry.high):  # an integer hyperparameter's bounds are integers, as its values
        _candidate(name, bound, where)
    return Range(entry.low, entry.high, log=entry.log, step=entry.step, integer=name in INTEGER_PARAMS,
                 zero=getattr(entry, "zero", False))


def _candidate(name: str, value: Any, where: str) -> Any:
    """`value` as PolicyConfig (TrainConfig) takes it, so the space can never yield an invalid policy (training
    control)."""
    return check_field(TrainConfig if name in TRAINING_TUNABLE else PolicyConfig, name, value, where)


def parse_space(block: Mapping[str, Any] | None, where: str = "scoring_policy") -> dict[str, Spec]:
    """The `scoring_policy` block of a study file (at key path `where`) -> one Spec per hyperparameter (defaults
    for unset ones)."""
    block = parse(PolicyBlock, block or {}, where)
    return {name: parse_spec(name, block[name], where) if name in block else DEFAULT_SPACE[name]
            for name in HYPERPARAMETERS}


def parse_training(block: Mapping[str, Any] | None) -> tuple[TrainConfig, dict[str, Spec]]:
    """The study's `training:` block -> (the fixed training control, a Spec per tuned knob keyed by its Optuna
    parameter name `training.<knob>`). A tuned knob keeps its TrainConfig default in the fixed control (what
    the V1 baseline trial trains with)."""
    fixed: dict[str, Any] = {}
    tuned: dict[str, Spec] = {}
    for name, raw in parse(dict[str, Any], block or {}, "training").items():
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
    from optuna.trial import FixedTrial  # lazily, as everywhere in this module

    fixed = FixedTrial(dict(params))
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

    @staticmethod
    def _distributions():
        from optuna import distributions  # lazily, as everywhere in this module

        return distributions

    def suggest_categorical(self, name, choices):
        return self._take(name, self._distributions().CategoricalDistribution(choices), choices[0])

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._take(name, self._distributions().IntDistribution(low, high, log=log, step=step), low)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._take(name, self._distributions().FloatDistribution(low, high, log=log, step=step), low)


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
