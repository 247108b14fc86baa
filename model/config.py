"""The V1 `scoring_policy` config and the training control, declared once as frozen pydantic dataclasses.

The V1 YAML is the user's contract: `read_policy_yaml` accepts exactly the V1 keys (plus an optional `training:`
block beside `policy_configs`), and `write_policy_yaml` writes them back in the same shape and order.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Mapping, Optional

import yaml
from annotated_types import Gt, MinLen
from pydantic import AfterValidator, Strict, model_validator

from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.model.validation import Block, Float, Int, Must, OneOf, declared, must, parse, refuse

ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "gelu", "silu", "tanh", "sigmoid")
POLICY_TYPES = ("deepfm",)
DEVICES = ("auto", "cpu", "cuda")
SHUFFLES = ("auto", "full", "block")
MAX_EMBEDDING_DIM = 4096  # far beyond any useful CTR embedding; larger is a typo (and gigabytes per field)
MAX_HIDDEN_WIDTH = 65536  # one such layer after 39 fields x d=16 is already 41M weights


def _at_most_max_dim(dim: int) -> int:
    if dim > MAX_EMBEDDING_DIM:
        raise must(f"must be at most {MAX_EMBEDDING_DIM}", fix="typical values are 4 to 64")
    return dim


def _no_huge_layer(units: tuple[int, ...]) -> tuple[int, ...]:
    for width in units:
        if width > MAX_HIDDEN_WIDTH:
            raise refuse(f"width {width} is larger than {MAX_HIDDEN_WIDTH}; use widths such as [256, 128, 64]")
    return units


PolicyType = Annotated[str, OneOf("policy type", POLICY_TYPES, fix=f"supported: {', '.join(POLICY_TYPES)}")]
Activation = Annotated[str, OneOf("activation", ACTIVATIONS, fix=f"supported: {', '.join(ACTIVATIONS)}")]
EmbeddingDim = Annotated[Int(1), AfterValidator(_at_most_max_dim)]
HiddenUnits = Annotated[tuple[Annotated[int, Strict(), Gt(0)], ...], MinLen(1),
                        Must("must be a non-empty list of positive integers such as [128, 64, 32]"),
                        AfterValidator(_no_huge_layer)]
Device = Annotated[str, OneOf("device", DEVICES)]
Shuffle = Annotated[str, OneOf("value", SHUFFLES)]
EvalEvery = Float("must be a fraction of an epoch in (0, 1] such as 0.25 (4 evaluations per epoch), or null for "
                  "per-epoch only", gt=0, le=1)


@declared("scoring_policy")
class PolicyConfig:
    """The five tunable hyperparameters of the V1 DeepFM scoring policy (seed defaults)."""

    embedding_dim: EmbeddingDim = 16
    deep_hidden_units: HiddenUnits = (128, 64, 32)
    activation_fn: Activation = "relu"
    dropout: Float("must be in [0, 1)", ge=0, lt=1) = 0.2
    learning_rate: Float("must be > 0 (e.g. 0.001)", gt=0) = 0.001
    policy_type: PolicyType = "deepfm"

    SHAPE: ClassVar[str] = "a mapping of hyperparameters"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PolicyConfig":
        return parse(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The V1 mapping, in V1 key order."""
        return {
            "policy_type": self.policy_type,
            "embedding_dim": self.embedding_dim,
            "deep_hidden_units": list(self.deep_hidden_units),
            "activation_fn": self.activation_fn,
            "dropout": self.dropout,
            "learning_rate": self.learning_rate,
        }


@declared("training")
class TrainConfig:
    """Training control: not part of the V1 policy, but saved beside it so a run can be reproduced."""

    batch_size: Int(1) = 4096
    max_epochs: Int(1) = 10
    patience: Int(0) = 2  # stop after this many epochs without a better validation AUC (best epoch restored); 0 = never
    patience_steps: Optional[Int(1)] = None  # with eval_every: stop after this many evaluations on the validation
    #   sample without a better score, keeping the best one's weights (scored on the full split)
    weight_decay: Float("must be >= 0", ge=0) = 0.0  # L2 on the dense (MLP) weights, through Adam
    embedding_l2: Float("must be >= 0", ge=0) = 0.0  # L2 on the embedding rows used in each batch
    seed: Int(0) = 42
    device: Device = "auto"  # auto = cuda when available
    threads: Optional[Int(1)] = None  # torch intra-op threads; None = torch's default
    eval_batch_size: Int(1) = 8192  # cache-sized on CPU; larger batches only add transient memory
    shuffle: Shuffle = "auto"  # full | block (permute inside ~256 MiB blocks) | auto: block when the split outgrows
    #   memory
    eval_every: Optional[EvalEvery] = None  # also validate every this fraction of an epoch (0.25: 4 points per
    #   epoch, the epoch's end included) on a fixed validation sample; a tuner reports and prunes there. None (or 1)
    #   = per epoch
    eval_sample_rows: Int(1) = 65536  # rows of that fixed sample (drawn once with `seed`); the whole split if smaller

    @model_validator(mode="after")
    def _steps_need_points(self) -> "TrainConfig":
        if self.patience_steps is not None and self.eval_every is None:
            raise refuse("patience_steps counts evaluations every eval_every of an epoch; set eval_every "
                         "(e.g. 0.25) too, or use patience (epochs)")
        return self

    @property
    def evals_per_epoch(self) -> int:
        """Evaluation points per epoch on the validation sample: ceil(1 / eval_every), the epoch's end being the
        last (0.25: 4; 0.3: 4, at 0.3, 0.6, 0.9 and 1); 1 without eval_every."""
        return 1 if self.eval_every is None else math.ceil(1 / self.eval_every - 1e-9)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TrainConfig":
        return parse(cls, data or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@declared()
class _V1Configs:
    scoring_policy: PolicyConfig

    MISSING: ClassVar[str] = "needs a 'scoring_policy:' mapping"


@declared()
class _V1File:
    """A V1 policy file: `policy_configs: {scoring_policy: {...}}`, optionally `training: {...}` beside it."""

    policy_configs: _V1Configs
    training: Block(TrainConfig) = TrainConfig()

    SHAPE: ClassVar[str] = "a top-level 'policy_configs:' mapping with a 'scoring_policy:' entry"
    MISSING: ClassVar[str] = f"expected {SHAPE}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML lets the last one win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"duplicate key '{key}' at line {line} (first at line {seen[key]}); "
                                  f"keep one of them")
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> Any:
    """A YAML file as Python data; a missing file, bad syntax or a duplicated key is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}; fix the syntax") from None


def read_policy_yaml(path: str | Path) -> tuple[PolicyConfig, TrainConfig]:
    """Read a V1 policy file; an optional top-level `training:` block sets the training control."""
    document = parse(_V1File, load_yaml(path), source=str(path))
    return document.policy_configs.scoring_policy, document.training


def policy_to_v1_yaml(policy: PolicyConfig) -> str:
    """The V1 YAML text, keys in V1 order, hidden units in flow style as users write them."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

    class _Quoted(str):
        pass

    def _quoted(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')

    _Dumper.add_representer(list, _list)
    _Dumper.add_representer(_Quoted, _quoted)
    body = policy.to_dict()
    body["activation_fn"] = _Quoted(body["activation_fn"])  # the V1 files quote it: keep them diff-clean
    document = {"policy_configs": {"scoring_policy": body}}
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def policy_with_training_yaml(policy: PolicyConfig, training: TrainConfig | None) -> str:
    """The V1 YAML with the training control beside it (the `training:` block `read_policy_yaml` accepts), so
    `deepfm train --policy FILE` re-trains what a trial trained; unset optional values are left out."""
    text = policy_to_v1_yaml(policy)
    if training is None:
        return text
    values = {k: v for k, v in training.to_dict().items() if v is not None}
    return text + yaml.safe_dump({"training": values}, sort_keys=False, default_flow_style=False)


def write_policy_yaml(path: str | Path, policy: PolicyConfig) -> Path:
    path = Path(path)
    path.write_text(policy_to_v1_yaml(policy))
    return path
