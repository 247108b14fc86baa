"""Which columns are the label, categorical, multi-valued categorical and numeric features.

Declared in YAML (`schema:` block), inferred from a DataFrame with explicit overrides, or the Criteo preset.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Mapping

import pandas as pd
from annotated_types import MinLen
from pydantic import Strict, model_validator, with_config
from typing_extensions import TypedDict

from deepfm_tuner.model.errors import DataError, did_you_mean
from deepfm_tuner.model.validation import CONFIG, Int, Must, OneOf, declared, parse, refuse

NUMERIC_TRANSFORMS = ("log1p", "standardize", "none")
CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label",) + CRITEO_NUMERIC + CRITEO_CATEGORICAL
INFER_MAX_INT_CARDINALITY = 100  # integer columns with at most this many distinct values are categorical

Label = Annotated[str, Strict(), Must("must be a column name")]
Columns = Annotated[tuple[Annotated[str, Strict()], ...], Must("must be a list of column names")]
Separator = Annotated[str, Strict(), MinLen(1), Must("must be a non-empty string such as '|'")]
Transform = Annotated[str, OneOf("transform", NUMERIC_TRANSFORMS)]


@declared("schema")
class FeatureSchema:
    """Feature roles and the encoder's knobs. Field order is the model's field order."""

    label: Label = "label"
    categorical: Columns = ()
    numeric: Columns = ()
    multivalued: Columns = ()
    separator: Separator = "|"
    numeric_transform: Transform = "standardize"  # log1p = signed log1p then standardize (counts)
    min_count: Int(1) = 1  # tokens seen fewer times in training go to the field's OOV index
    max_tokens: Int(1) = 16  # multi-valued fields keep at most this many tokens per row

    @model_validator(mode="after")
    def _one_role_per_column(self) -> "FeatureSchema":
        seen: dict[str, str] = {}
        for role in ("categorical", "numeric", "multivalued"):
            for col in getattr(self, role):
                if col == self.label:
                    raise refuse(f"column '{col}' is the label and cannot also be a {role} feature")
                if col in seen:
                    raise refuse(f"column '{col}' is declared both {seen[col]} and {role}; pick one")
                seen[col] = role
        if not self.features:
            raise refuse("no feature columns; declare categorical/numeric columns or let them be inferred")
        return self

    @property
    def features(self) -> tuple[str, ...]:
        return self.categorical + self.multivalued + self.numeric

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSchema":
        return parse(cls, data)

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


@with_config(CONFIG)
class SchemaHints(TypedDict, total=False):
    """A data block's `schema:`: the roles and knobs declared (typed as FeatureSchema's); the rest is inferred."""

    label: Label
    categorical: Columns
    numeric: Columns
    multivalued: Columns
    ignore: Columns  # columns that are not features (an id, a timestamp)
    separator: Separator
    numeric_transform: Transform
    min_count: Int(1)
    max_tokens: Int(1)


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
