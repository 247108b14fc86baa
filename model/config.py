"""The V1 `scoring_policy` config and the training control, validated once into frozen dataclasses.

The V1 YAML is the user's contract: `read_policy_yaml` accepts exactly the V1 keys (plus an optional `training:`
block beside `policy_configs`), and `write_policy_yaml` writes them back in the same shape and order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from deepfm_tuner.model.errors import ConfigError, did_you_mean

ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "gelu", "silu", "tanh", "sigmoid")
POLICY_TYPES = ("deepfm",)
DEVICES = ("auto", "cpu", "cuda")
SHUFFLES = ("auto", "full", "block")
MAX_EMBEDDING_DIM = 4096  # far beyond any useful CTR embedding; larger is a typo (and gigabytes per field)
MAX_HIDDEN_WIDTH = 65536  # one such layer after 39 fields x d=16 is already 41M weights


def _check_keys(given: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in given:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key '{key}'{did_you_mean(str(key), allowed)}; allowed keys: {', '.join(allowed)}"
            )


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PolicyConfig:
    """The five tunable hyperparameters of the V1 DeepFM scoring policy (seed defaults)."""

    embedding_dim: int = 16
    deep_hidden_units: tuple[int, ...] = (128, 64, 32)
    activation_fn: str = "relu"
    dropout: float = 0.2
    learning_rate: float = 0.001
    policy_type: str = "deepfm"

    KEYS = ("policy_type", "embedding_dim", "deep_hidden_units", "activation_fn", "dropout", "learning_rate")

    def __post_init__(self) -> None:
        where = "scoring_policy"
        if self.policy_type not in POLICY_TYPES:
            raise ConfigError(
                f"{where}.policy_type: unknown policy type {self.policy_type!r}"
                f"{did_you_mean(str(self.policy_type), POLICY_TYPES)}; supported: {', '.join(POLICY_TYPES)}"
            )
        _int(self.embedding_dim, f"{where}.embedding_dim", 1)
        if self.embedding_dim > MAX_EMBEDDING_DIM:
            raise ConfigError(f"{where}.embedding_dim must be at most {MAX_EMBEDDING_DIM}, got {self.embedding_dim}; "
                              f"typical values are 4 to 64")
        units = self.deep_hidden_units
        if isinstance(units, (str, bytes)) or not isinstance(units, (list, tuple)) or len(units) == 0:
            raise ConfigError(
                f"{where}.deep_hidden_units must be a non-empty list of positive integers such as [128, 64, 32], "
                f"got {units!r}"
            )
        for u in units:
            if isinstance(u, bool) or not isinstance(u, int) or u <= 0:
                raise ConfigError(
                    f"{where}.deep_hidden_units must contain positive integers only, got {list(units)!r}"
                )
            if u > MAX_HIDDEN_WIDTH:
                raise ConfigError(f"{where}.deep_hidden_units: width {u} is larger than {MAX_HIDDEN_WIDTH}; "
                                  f"use widths such as [256, 128, 64]")
        object.__setattr__(self, "deep_hidden_units", tuple(units))
        if self.activation_fn not in ACTIVATIONS:
            raise ConfigError(
                f"{where}.activation_fn: unknown activation {self.activation_fn!r}"
                f"{did_you_mean(str(self.activation_fn), ACTIVATIONS)}; supported: {', '.join(ACTIVATIONS)}"
            )
        dropout = _float(self.dropout, f"{where}.dropout")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{where}.dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "dropout", dropout)
        lr = _float(self.learning_rate, f"{where}.learning_rate")
        if lr <= 0:
            raise ConfigError(f"{where}.learning_rate must be > 0 (e.g. 0.001), got {self.learning_rate}")
        object.__setattr__(self, "learning_rate", lr)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PolicyConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"scoring_policy must be a mapping of hyperparameters, got {type(data).__name__}")
        _check_keys(data, cls.KEYS, "scoring_policy")
        return cls(**dict(data))

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


@dataclass(frozen=True)
class TrainConfig:
    """Training control: not part of the V1 policy, but saved beside it so a run can be reproduced."""

    batch_size: int = 4096
    max_epochs: int = 10
    patience: int = 2  # stop after this many epochs without a better validation AUC (best epoch restored); 0 = never
    weight_decay: float = 0.0  # L2 on the dense (MLP) weights, through Adam
    embedding_l2: float = 0.0  # L2 on the embedding rows used in each batch
    seed: int = 42
    device: str = "auto"  # auto = cuda when available
    threads: int | None = None  # torch intra-op threads; None = torch's default
    eval_batch_size: int = 8192  # cache-sized on CPU; larger batches only add transient memory
    shuffle: str = "auto"  # full | block (permute inside ~256 MiB blocks) | auto: block when the split outgrows memory
    eval_every: float | None = None  # also validate every this fraction of an epoch (0.25: 4 points per epoch, the
    #   epoch's end included) on a fixed validation sample; a tuner reports and prunes there. None (or 1) = per epoch
    eval_sample_rows: int = 65536  # rows of that fixed sample (drawn once with `seed`); the whole split if smaller

    def __post_init__(self) -> None:
        _int(self.batch_size, "training.batch_size", 1)
        _int(self.max_epochs, "training.max_epochs", 1)
        _int(self.patience, "training.patience", 0)
        _int(self.seed, "training.seed", 0)
        _int(self.eval_batch_size, "training.eval_batch_size", 1)
        for name in ("weight_decay", "embedding_l2"):
            value = _float(getattr(self, name), f"training.{name}")
            if value < 0:
                raise ConfigError(f"training.{name} must be >= 0, got {value}")
            object.__setattr__(self, name, value)
        if self.device not in DEVICES:
            raise ConfigError(
                f"training.device: unknown device {self.device!r}{did_you_mean(str(self.device), DEVICES)}; "
                f"use one of {', '.join(DEVICES)}"
            )
        if self.threads is not None:
            _int(self.threads, "training.threads", 1)
        if self.shuffle not in SHUFFLES:
            raise ConfigError(f"training.shuffle: unknown value {self.shuffle!r}{did_you_mean(str(self.shuffle), SHUFFLES)}; "
                              f"use one of {', '.join(SHUFFLES)}")
        if self.eval_every is not None:
            every = self.eval_every
            if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 < every <= 1:
                raise ConfigError(f"training.eval_every must be a fraction of an epoch in (0, 1] such as 0.25 (4 "
                                  f"evaluations per epoch), or null for per-epoch only; got {every!r}")
            object.__setattr__(self, "eval_every", float(every))
        _int(self.eval_sample_rows, "training.eval_sample_rows", 1)

    @property
    def evals_per_epoch(self) -> int:
        """Evaluation points per epoch on the validation sample: ceil(1 / eval_every), the epoch's end being the
        last (0.25: 4; 0.3: 4, at 0.3, 0.6, 0.9 and 1); 1 without eval_every."""
        return 1 if self.eval_every is None else math.ceil(1 / self.eval_every - 1e-9)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TrainConfig":
        data = data or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"training must be a mapping, got {type(data).__name__}")
        _check_keys(data, TRAIN_KEYS, "training")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def policy_from_v1(document: Any, source: str = "policy") -> PolicyConfig:
    """Parse a loaded V1 document: {'policy_configs': {'scoring_policy': {...}}}."""
    if not isinstance(document, Mapping) or "policy_configs" not in document:
        raise ConfigError(f"{source}: expected a top-level 'policy_configs:' mapping with a 'scoring_policy:' entry")
    configs = document["policy_configs"]
    if not isinstance(configs, Mapping) or "scoring_policy" not in configs:
        raise ConfigError(f"{source}: 'policy_configs' must contain a 'scoring_policy:' mapping")
    _check_keys(configs, ("scoring_policy",), f"{source}: policy_configs")
    try:
        return PolicyConfig.from_dict(configs["scoring_policy"])
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


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
    document = load_yaml(path)
    if isinstance(document, Mapping):
        _check_keys(document, ("policy_configs", "training"), str(path))
    policy = policy_from_v1(document, str(path))
    try:
        train = TrainConfig.from_dict(document.get("training"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return policy, train


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
