"""Which columns are the label, categorical, multi-valued categorical and numeric features.

Declared in YAML (`schema:` block), inferred from a DataFrame with explicit overrides, or the Criteo preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from deepfm_tuner.model.errors import ConfigError, DataError, did_you_mean

NUMERIC_TRANSFORMS = ("log1p", "standardize", "none")
CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label",) + CRITEO_NUMERIC + CRITEO_CATEGORICAL
INFER_MAX_INT_CARDINALITY = 100  # integer columns with at most this many distinct values are categorical


@dataclass(frozen=True)
class FeatureSchema:
    """Feature roles and the encoder's knobs. Field order is the model's field order."""

    label: str = "label"
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    multivalued: tuple[str, ...] = ()
    separator: str = "|"
    numeric_transform: str = "standardize"  # log1p = signed log1p then standardize (counts)
    min_count: int = 1  # tokens seen fewer times in training go to the field's OOV index
    max_tokens: int = 16  # multi-valued fields keep at most this many tokens per row

    def __post_init__(self) -> None:
        for name in ("categorical", "numeric", "multivalued"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(c, str) for c in value):
                raise ConfigError(f"schema.{name} must be a list of column names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        seen: dict[str, str] = {}
        for role in ("categorical", "numeric", "multivalued"):
            for col in getattr(self, role):
                if col == self.label:
                    raise ConfigError(f"schema: column '{col}' is the label and cannot also be a {role} feature")
                if col in seen:
                    raise ConfigError(f"schema: column '{col}' is declared both {seen[col]} and {role}; pick one")
                seen[col] = role
        if not self.features:
            raise ConfigError("schema: no feature columns; declare categorical/numeric columns or let them be inferred")
        if self.numeric_transform not in NUMERIC_TRANSFORMS:
            raise ConfigError(
                f"schema.numeric_transform: unknown transform {self.numeric_transform!r}"
                f"{did_you_mean(str(self.numeric_transform), NUMERIC_TRANSFORMS)}; use one of "
                f"{', '.join(NUMERIC_TRANSFORMS)}"
            )
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 1:
            raise ConfigError(f"schema.min_count must be an integer >= 1, got {self.min_count!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"schema.max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.separator, str) or len(self.separator) == 0:
            raise ConfigError(f"schema.separator must be a non-empty string such as '|', got {self.separator!r}")

    @property
    def features(self) -> tuple[str, ...]:
        return self.categorical + self.multivalued + self.numeric

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSchema":
        allowed = tuple(f.name for f in dataclasses.fields(cls))
        for key in data:
            if key not in allowed:
                raise ConfigError(
                    f"schema: unknown key '{key}'{did_you_mean(str(key), allowed)}; allowed keys: {', '.join(allowed)}"
                )
        return cls(**dict(data))

    def check_columns(self, df: pd.DataFrame, source: str, need_label: bool = True) -> None:
        """A declared column missing from the data is an error naming the file and the column."""
        wanted = ((self.label,) if need_label else ()) + self.features
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            hint = did_you_mean(missing[0], [str(c) for c in df.columns])
            raise DataError(
                f"{source}: missing column(s) {shown}{hint}; the file has {len(df.columns)} columns "
                f"({', '.join(map(str, list(df.columns)[:8]))}{' ...' if len(df.columns) > 8 else ''})"
            )


def criteo_schema(min_count: int = 1) -> FeatureSchema:
    return FeatureSchema(
        label="label",
        categorical=CRITEO_CATEGORICAL,
        numeric=CRITEO_NUMERIC,
        numeric_transform="log1p",
        min_count=min_count,
    )


def infer_schema(
    df: pd.DataFrame,
    label: str,
    *,
    categorical: tuple[str, ...] = (),
    numeric: tuple[str, ...] = (),
    multivalued: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
    **options: Any,
) -> FeatureSchema:
    """Roles for every column not declared: floats and wide integers numeric, narrow integers and strings
    categorical, strings holding the separator multi-valued. Declared roles always win."""
    if label not in df.columns:
        raise DataError(f"label column '{label}' not found{did_you_mean(label, map(str, df.columns))}; "
                        f"set schema.label to one of: {', '.join(map(str, list(df.columns)[:10]))}")
    separator = options.get("separator", "|")
    declared = set(categorical) | set(numeric) | set(multivalued) | set(ignore) | {label}
    cats, nums, multis = list(categorical), list(numeric), list(multivalued)
    for col in df.columns:
        if col in declared:
            continue
        series = df[col]
        if pd.api.types.is_bool_dtype(series):
            cats.append(col)
        elif pd.api.types.is_integer_dtype(series):
            (cats if series.nunique() <= INFER_MAX_INT_CARDINALITY else nums).append(col)
        elif pd.api.types.is_float_dtype(series):
            nums.append(col)
        elif pd.api.types.is_datetime64_any_dtype(series):
            continue  # timestamps order splits; they are not features unless declared
        else:
            sample = series.dropna().astype(str).head(1000)
            (multis if sample.str.contains(separator, regex=False).any() else cats).append(col)
    return FeatureSchema(
        label=label, categorical=tuple(cats), numeric=tuple(nums), multivalued=tuple(multis), **options
    )
