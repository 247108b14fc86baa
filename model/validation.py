"""Configs by declaration: frozen pydantic dataclasses that refuse unknown keys, the constrained types they are
declared with (each carrying the sentence a refusal reads as), and the one place a pydantic ValidationError
becomes our one-line ConfigError: the key path, the value received, what is allowed, the fix.

    unknown key     `study.sampler: unknown key 'typ' (did you mean 'type'?); allowed keys: type, seed, ...`
    Must/must()     `training.batch_size must be an integer >= 1, got 0`
    OneOf/refuse()  `study.sampler.type: unknown sampler 'cmaes'; use one of tpe, random, gp, qmc`
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args

from annotated_types import Ge, Interval
from pydantic import AllowInfNan, BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError
from pydantic import dataclasses as pydantic_dataclasses
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import is_typeddict

from deepfm_tuner.model.errors import ConfigError, did_you_mean

CONFIG = ConfigDict(extra="forbid", populate_by_name=True)
SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
MAPPING_ERRORS = ("dataclass_type", "dict_type")
UNKNOWN_KEY_ERRORS = ("extra_forbidden", "unexpected_keyword_argument")


def declared(where: str = "", kw_only: bool = False):
    """Class decorator: a frozen pydantic dataclass that refuses unknown keys. A bad value, from code or from a
    file, raises one-line ConfigError whose key path starts at `where` (the block's place in a file)."""

    def make(cls: type) -> type:
        model = pydantic_dataclasses.dataclass(frozen=True, config=CONFIG, kw_only=kw_only)(cls)
        validate = model.__init__

        @functools.wraps(validate)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            try:
                validate(self, *args, **kwargs)
            except ValidationError as exc:
                raise config_error(exc, model, where) from None

        model.__init__ = __init__
        model.where = where
        return model

    return make


def parse(kind: Any, data: Any, where: str | None = None, source: str = "") -> Any:
    """`data` validated as `kind` (a declared class, a TypedDict or an annotated type); a refusal is one
    ConfigError, prefixed with `source` (the file) when given."""
    try:
        return _adapter(kind).validate_python(data)
    except ValidationError as exc:
        raise config_error(exc, kind, getattr(kind, "where", "") if where is None else where, source) from None


def check_field(model: type, name: str, value: Any, where: str) -> Any:
    """`value` validated as the field `name` of `model` (a search-space candidate for it): `<where>: <why>`."""
    try:
        return _adapter(model.__pydantic_fields__[name].rebuild_annotation()).validate_python(value)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_sentence(exc.errors(include_url=False)[0], None, (), '').lstrip()}") from None


# -- what a refusal reads as -----------------------------------------------------------------------------
def refuse(text: str) -> PydanticCustomError:
    """A rule's refusal, shown after the key path: `data: give either ...`."""
    return PydanticCustomError("refused", "{text}", {"text": text})


def must(predicate: str, fix: str = "") -> PydanticCustomError:
    """A value's refusal: `<path> <predicate>, got <value>[; <fix>]`."""
    return PydanticCustomError("must", "{text}", {"text": predicate, "fix": fix})


@dataclass(frozen=True)
class Must:
    """Annotated marker: whatever the type it follows refuses reads `<path> <predicate>, got <value>`."""

    predicate: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        def wrap(value: Any, validate: Any) -> Any:
            try:
                return validate(value)
            except ValidationError:
                raise must(self.predicate) from None

        return core_schema.no_info_wrap_validator_function(wrap, handler(source))


@dataclass(frozen=True)
class OneOf:
    """Annotated marker: one of `options`; anything else reads `<path>: unknown <noun> 'x' (did you mean 'y'?);
    <fix>` (by default: use one of <options>)."""

    noun: str
    options: tuple[str, ...]
    fix: str = ""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self._check)

    def _check(self, value: Any) -> str:
        if isinstance(value, str) and value in self.options:
            return value
        fix = self.fix or f"use one of {', '.join(self.options)}"
        raise refuse(f"unknown {self.noun} {value!r}{did_you_mean(str(value), self.options)}; {fix}")


# -- declared types --------------------------------------------------------------------------------------
def _scientific(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads `1e-5` (no dot) as a string: take it as the number it spells."""
    return float(value) if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()) else value


def Int(minimum: int) -> Any:  # noqa: N802 (a type, as pydantic's conint)
    """An integer (not a bool, not a float) >= minimum."""
    return Annotated[int, Strict(), Ge(minimum), Must(f"must be an integer >= {minimum}")]


def Float(predicate: str, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
          le: float | None = None) -> Any:  # noqa: N802
    """A finite number (an int is taken as a float; `1e-5` from YAML too) within the given bounds."""
    return Annotated[float, Strict(), AllowInfNan(False), Interval(gt=gt, ge=ge, lt=lt, le=le),
                     BeforeValidator(_scientific), Must(predicate)]


def Block(model: type, scalar_key: str | None = None) -> Any:  # noqa: N802
    """A nested block: null means its defaults; a bare name is `{scalar_key: name}` (`sampler: random`)."""

    def shape(value: Any) -> Any:
        if value is None:
            return {}
        return {scalar_key: value} if scalar_key and isinstance(value, str) else value

    return Annotated[model, BeforeValidator(shape)]


# An int stays an int, a float a float (a search range's bounds keep the type they were written with).
Number = Annotated[Union[Annotated[int, Strict()], Annotated[float, Strict(), AllowInfNan(False)]],
                   BeforeValidator(_scientific), Must("must be a number")]
Bool = Annotated[bool, Strict(), Must("must be true or false")]
Text = Annotated[str, Strict(), Must("must be a string")]


# -- ValidationError -> ConfigError ----------------------------------------------------------------------
def config_error(exc: ValidationError, root: Any, where: str = "", source: str = "") -> ConfigError:
    """The first refusal in `exc` (validating `root`) as one line, an unknown key first (a misspelt key is also
    a missing one); its key path starts at `where`."""
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] in UNKNOWN_KEY_ERRORS), errors[0])
    text = _sentence(error, root, _names(root, error["loc"]), where)
    return ConfigError(f"{source}: {text}" if source else text)


def _sentence(error: dict, root: Any, loc: tuple[str, ...], where: str) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    path, parent = _path(where, loc), _path(where, loc[:-1])
    if kind in UNKNOWN_KEY_ERRORS:
        keys = list(_fields(_type_at(root, loc[:-1])))
        return (f"{_lead(parent)}unknown key '{loc[-1]}'{did_you_mean(loc[-1], keys)}; "
                f"allowed keys: {', '.join(keys)}")
    if kind == "missing":
        owner = _type_at(root, loc[:-1])
        if hasattr(owner, "MISSING"):
            return _lead(parent) + owner.MISSING
        kind, ctx, value = "must", {"text": _predicate(owner, loc[-1])}, None
    if kind in MAPPING_ERRORS:
        shape = getattr(_type_at(root, loc), "SHAPE", "a mapping")
        return f"{path} must be {shape}, got {value!r}" if path else f"expected {shape}, got {value!r}"
    if kind == "refused":
        return _lead(path) + ctx["text"]
    if kind == "must":
        return f"{path} {ctx['text']}, got {value!r}" + (f"; {ctx['fix']}" if ctx.get("fix") else "")
    return f"{path} is invalid ({error['msg'][:1].lower()}{error['msg'][1:]}), got {value!r}"


def _path(where: str, loc: tuple[str, ...]) -> str:
    return ".".join(part for part in (where, *loc) if part)


def _lead(path: str) -> str:
    return f"{path}: " if path else ""


def _names(root: Any, loc: tuple) -> tuple[str, ...]:
    """The error's location as key names; a positional argument of a constructor by its field's name."""
    names = [str(part) for part in loc]
    fields = list(getattr(root, "__pydantic_fields__", {}))
    if loc and isinstance(loc[0], int) and loc[0] < len(fields):
        names[0] = fields[loc[0]]
    return tuple(names)


def _fields(kind: Any) -> dict[str, Any]:
    """A declared class's or TypedDict's keys (aliases as written in a file) -> their annotations."""
    if isinstance(kind, type) and hasattr(kind, "__pydantic_fields__"):
        return {(info.alias or name): info.annotation for name, info in kind.__pydantic_fields__.items()}
    if is_typeddict(kind):
        return dict(kind.__annotations__)
    return {}


def _type_at(kind: Any, loc: tuple[str, ...]) -> Any:
    """The declared class (or TypedDict) found at `loc` below `kind`, or None."""
    for key in loc:
        kind = _declared_in(_fields(kind).get(key))
    return kind


def _declared_in(annotation: Any) -> Any:
    if annotation is None or _fields(annotation):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _declared_in(arg)) is not None), None)


def _predicate(owner: Any, key: str) -> str:
    """What the (missing) field `key` of `owner` must be, from its Must marker."""
    for name, info in getattr(owner, "__pydantic_fields__", {}).items():
        if key in (name, info.alias):
            return next((m.predicate for m in info.metadata if isinstance(m, Must)), "is required")
    return "is required"


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)
