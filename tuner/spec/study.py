"""The study file: search space, data, training control, sampler, pruner, budget, stores. Validated once, by
declaration (model.validation), into a StudySpec.

    study:     {name, n_trials, timeout, metric, sampler, pruner, storage, tracking_uri, experiment,
                registered_model, promote, warm_start: {from, top_k, storage}, finalists: {top_k, seeds},
                constraints: {max_parameters, max_latency_ms} (serving budgets: tuner.spec.constraints),
                refit: {max_epochs, patience, candidates} | true | false, reference: lightgbm | {type: lightgbm, params: {...}}}
    data:      see model.data.source.DataSpec (files or `synthetic: {rows: N}`)
    training:  see model.config.TrainConfig (batch_size, max_epochs, patience, ...); embedding_l2, weight_decay
               and batch_size may be tunable specs, as in the policy (tuner.spec.space)
    policy_configs: {scoring_policy: {...}}   each hyperparameter fixed or tunable (tuner.spec.space)
    promotion: {require: not_worse | better, alpha: 0.05}   the champion gate (DeLong's paired AUC test)
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Mapping, Optional

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    WrapValidator,
    model_validator,
)

from deepfm_tuner.model.config import TrainConfig, load_yaml
from deepfm_tuner.model.data.source import DataSpec
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.model.validation import Block, Bool, Float, Int, Must, OneOf, Text, declared, parse, refuse
from deepfm_tuner.tuner.spec.constraints import ConstraintsSpec
from deepfm_tuner.tuner.spec.space import Spec, parse_space, parse_training

if TYPE_CHECKING:  # Optuna is imported when samplers and pruners are built, not when a study file is read
    import optuna

SAMPLERS = ("tpe", "random", "gp", "qmc")
PRUNERS = ("median", "hyperband", "none")
METRICS = {"val_auc": "maximize", "val_logloss": "minimize"}
REQUIREMENTS = ("not_worse", "better")
REFERENCES = ("lightgbm",)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


def _name_text(value: Any) -> Any:
    """`name: 2024` is read as a number by YAML; a study name is its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _mlflow_accepts(name: str) -> str:
    """MLflow's rules for a registered model name (mlflow.utils.validation._validate_model_name; a test keeps the
    two in step), checked when the study is read, not after it trained, and without importing MLflow (seconds)."""
    normal = posixpath.normpath(name)
    if not name.strip():
        problem = "a name cannot be empty"
    elif "/" in name or ":" in name:
        problem = "names cannot contain '/' or ':'"
    elif normal != name or normal == "." or normal.startswith(("..", "/")):
        problem = f"names must not resolve to other names as paths; this one resolves to {normal!r}"
    else:
        return name
    raise refuse(f"{name!r} is refused by MLflow ({problem}); pick a name such as 'deepfm-ctr'")


StudyName = Annotated[str, BeforeValidator(_name_text), StringConstraints(pattern=NAME_PATTERN),
                      Must("must be letters, digits, '_', '.', '-' (max 100 characters)")]
EarlierStudy = Annotated[str, StringConstraints(pattern=NAME_PATTERN),
                         Must("must name an earlier study (letters, digits, '_', '.', '-')")]
ModelName = Annotated[Text, AfterValidator(_mlflow_accepts)]


@declared("study.sampler")
class SamplerSpec:
    type: Annotated[str, OneOf("sampler", SAMPLERS)] = "tpe"
    seed: Int(0) = 42
    n_startup_trials: Int(0) = 5  # random trials before TPE/GP model the space

    SHAPE: ClassVar[str] = "a name or a mapping"

    def build(self) -> optuna.samplers.BaseSampler:
        import optuna  # built by the commands that run trials; reading a study file does not import Optuna

        if self.type == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials, multivariate=True,
                                              constant_liar=True)
        if self.type == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.type == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.n_startup_trials)
        return optuna.samplers.QMCSampler(seed=self.seed)


@declared("study.pruner")
class PrunerSpec:
    """How weak trials are stopped, at each report: every epoch, or with `training.eval_every` every evaluation
    point on the validation sample (eval_every 0.25: 4 reports per epoch). median: below the median of earlier
    trials at the same report, after `n_warmup_steps` reports (epochs without eval_every; 4 = one epoch at 0.25),
    once `n_startup_trials` trials completed and `n_min_trials` trials reported that step. hyperband: brackets
    from 1 report up to all of them (max_epochs x reports per epoch); the median settings do not apply. Optuna
    takes a report's step (0-based) as the resource used, so hyperband's first rung is at the 2nd report (half an
    epoch at eval_every 0.25; the 2nd epoch without it), and which trials it compares depends on its brackets."""

    type: Annotated[str, OneOf("pruner", PRUNERS)] = "median"
    n_startup_trials: Int(0) = 3  # trials that run to the end before pruning starts
    n_warmup_steps: Int(0) = 1  # reports a trial always gets (epochs without training.eval_every)
    n_min_trials: Int(1) = 1  # trials that must have reported a step before a trial is judged at it

    SHAPE: ClassVar[str] = "a name or a mapping"

    def build(self, max_epochs: int, reports_per_epoch: int = 1) -> optuna.pruners.BasePruner:
        """The Optuna pruner; a trial reports `reports_per_epoch` times an epoch (TrainConfig.evals_per_epoch
        with eval_every, else 1), so hyperband's resource is one report and its maximum every report."""
        import optuna  # as SamplerSpec.build

        if self.type == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials,
                                               n_warmup_steps=self.n_warmup_steps, n_min_trials=self.n_min_trials)
        if self.type == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs * reports_per_epoch,
                                                  reduction_factor=3)
        return optuna.pruners.NopPruner()


@declared("promotion")
class PromotionSpec:
    """The champion gate: a challenger takes `champion` unless it is significantly worse (not_worse), or only
    when it is significantly better (better), by DeLong's two-sided paired AUC test at level `alpha`."""

    require: Annotated[str, OneOf("requirement", REQUIREMENTS)] = "not_worse"
    alpha: Float("must be a number with 0 < alpha < 1 (e.g. 0.05)", gt=0, lt=1) = 0.05

    SHAPE: ClassVar[str] = "a requirement or a mapping such as {require: not_worse, alpha: 0.05}"


@declared("study.warm_start")
class WarmStartSpec:
    """Enqueue the `top_k` best configurations of an earlier study (`from`) when this study is created."""

    source: EarlierStudy = Field(alias="from")
    top_k: Int(1) = 5
    storage: Optional[Annotated[Text, Must("must be a storage URL string")]] = None  # default: this study's storage

    SHAPE: ClassVar[str] = "a mapping such as {from: OLD_STUDY, top_k: 5}"


@declared("study.finalists")
class FinalistsSpec:
    """After the trials: re-train the `top_k` best complete trials with `seeds` more seeds each and choose the
    champion candidate by the mean of those retrains (tuner.trials.finalists). top_k 1 re-seeds the winner alone."""

    top_k: Int(1) = 3
    seeds: Int(1) = 3

    SHAPE: ClassVar[str] = "a mapping such as {top_k: 3, seeds: 3}"


@declared("study.refit")
class RefitSpec:
    """After the trials and finalists: train the chosen configuration (and the V1 baseline's) again on every
    training row, early-stopped on the validation split (tuner.pipeline.refit). Unset values: the study's
    training.max_epochs and training.patience. `candidates`: how many of the best configurations are refit; the
    refit with the best validation score, the V1 baseline's included, is registered (a sample's winner need not
    be the best on every row)."""

    max_epochs: Optional[Int(1)] = None
    patience: Optional[Int(0)] = None
    candidates: Int(1) = 1

    SHAPE: ClassVar[str] = "true, false or a mapping such as {max_epochs: 3, patience: 1, candidates: 1}"


def _flag_or_block(value: Any, handler: Any) -> Any:
    """`refit: true` is the block with its defaults, `refit: false` turns it off (kept as False: unset means
    "on when data.tune_rows is set")."""
    if value is False:
        return False
    return handler({} if value is True else value)


RefitBlock = Annotated[Optional[RefitSpec], WrapValidator(_flag_or_block)]


ParamValue = Annotated[StrictBool | StrictInt | StrictFloat | StrictStr,
                       Must("must be a number, true/false or a string")]


@declared("study.reference")
class ReferenceSpec:
    """A tree model trained on the trials' own train / validation rows and scored on the champion's test rows, so a
    study says whether DeepFM beat it (tuner.trials.reference). `params` are LightGBM's, over our defaults; their
    names are checked against LightGBM's own list when the study starts."""

    type: Annotated[str, OneOf("reference model", REFERENCES, "use lightgbm (the one reference model so far)")] = \
        "lightgbm"
    params: dict[str, ParamValue] = field(default_factory=dict)

    SHAPE: ClassVar[str] = "a model name or a mapping such as {type: lightgbm, params: {num_leaves: 127}}"


@declared("study")
class StudyBlock:
    """The `study:` block; its name defaults to the file's stem."""

    name: Optional[StudyName] = None
    n_trials: Optional[Int(1)] = 20  # total over all workers
    timeout: Optional[Float("must be a number of seconds > 0", gt=0)] = None  # seconds, per worker
    metric: Annotated[str, OneOf("metric", tuple(METRICS))] = "val_auc"
    sampler: Block(SamplerSpec, "type") = SamplerSpec()
    pruner: Block(PrunerSpec, "type") = PrunerSpec()
    storage: Optional[Text] = None
    tracking_uri: Optional[Text] = None
    experiment: Optional[Text] = None
    registered_model: Optional[ModelName] = None
    promote: Bool = True
    warm_start: Optional[Block(WarmStartSpec, "from")] = None
    finalists: Optional[FinalistsSpec] = None  # None: the best single trial is the champion candidate
    constraints: Optional[ConstraintsSpec] = None  # serving budgets; None: every trial may be champion
    refit: RefitBlock = None  # None: on when data.tune_rows is set; False: off


    reference: Optional[Block(ReferenceSpec, "type")] = None  # None: no tree-model reference

    @model_validator(mode="after")
    def _ends(self) -> "StudyBlock":
        if self.n_trials is None and self.timeout is None:
            raise refuse("set n_trials, timeout, or both, so the study ends")
        return self


@declared()
class PolicyConfigsBlock:
    scoring_policy: Optional[dict[str, Any]] = None  # each hyperparameter fixed or tunable (tuner.spec.space)

    SHAPE: ClassVar[str] = "a mapping with a 'scoring_policy:' entry"


@declared(kw_only=True)
class StudyFile:
    """A study file as written; parse_study assembles the StudySpec from it."""

    study: Block(StudyBlock) = StudyBlock()
    data: DataSpec
    training: Optional[dict[str, Any]] = None  # the training control, knobs tunable (tuner.spec.space)
    policy_configs: Block(PolicyConfigsBlock) = PolicyConfigsBlock()
    promotion: Block(PromotionSpec, "require") = PromotionSpec()

    SHAPE: ClassVar[str] = "a mapping with 'study', 'data', 'training' and 'policy_configs'"
    MISSING: ClassVar[str] = "missing 'data:' block; give 'data: {train: PATH}' or 'data: {synthetic: {rows: N}}'"


@dataclass(frozen=True)
class StudySpec:
    """What a study runs: assembled by parse_study from a validated StudyFile (or built in code, as bench/ does)."""

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
    constraints: ConstraintsSpec | None = None  # serving budgets; None: every trial may be champion
    refit: RefitSpec | None = None  # None: promotion registers the chosen run as trained (parse_study resolves it)
    reference: ReferenceSpec | None = None  # None: no tree-model reference
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


def parse_study(document: Any, source: str, default_name: str) -> StudySpec:
    """A loaded study file -> the validated StudySpec; any refusal is one ConfigError naming `source`."""
    file = parse(StudyFile, document, source=source)
    block = file.study
    try:
        training, training_space = parse_training(file.training)
        space = parse_space(file.policy_configs.scoring_policy, "policy_configs.scoring_policy")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    name = block.name or parse(StudyName, default_name, "study.name", source)
    settings = {f.name: getattr(block, f.name) for f in dataclasses.fields(block) if f.name not in ("name", "refit")}
    refit = block.refit if block.refit is not False else None
    if block.refit is None and file.data.tune_rows is not None:  # trials on a sample: the winner on every row
        refit = RefitSpec()
    if refit is not None:  # its defaults are the study's own training settings
        refit = RefitSpec(max_epochs=refit.max_epochs or training.max_epochs,
                          patience=training.patience if refit.patience is None else refit.patience,
                          candidates=refit.candidates)
    return StudySpec(name=name, space=space, data=file.data, training=training, training_space=training_space,
                     promotion=file.promotion, source=source, refit=refit, **settings)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study YAML; the study name defaults to the file's stem."""
    path = Path(path)
    return parse_study(load_yaml(path), str(path), default_name=path.stem)
