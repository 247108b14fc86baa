"""Model references and the registry client they are resolved with.

A reference is `NAME` (= NAME@champion), `NAME@alias` or `NAME/VERSION`, any of them optionally after `models:/`;
`NAME@3` (or `NAME@v3`) is version 3 unless an alias of that name exists.
Aliases only (`champion`, `challenger`), never MLflow's deprecated stages. Every registry call goes through an
explicit client; `using_client` is the one place that points MLflow's fluent API (runs, load_model, downloads) at
a client's stores, and puts the previous settings back.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from deepfm_tuner.model.errors import UserInputError, did_you_mean

CHAMPION, CHALLENGER = "champion", "challenger"
LOCK_SUFFIX = ".lock"  # registry.lock: the registered model that is a model's promotion lock
_NAME = r"[^/@:\s][^/@:]*"
_REFERENCE = re.compile(rf"^(?:models:/)?(?P<name>{_NAME})(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")
_VERSION_ALIAS = re.compile(r"^[vV]?(\d+)$")  # NAME@3 or NAME@v3: version 3 when no alias of that name exists


class RegistryError(UserInputError):
    """A model reference that does not parse, or names nothing in the registry."""


class ModelNotFoundError(RegistryError):
    """The registered model, alias or version does not exist."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: exactly one of alias / version is set."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


def parse_model_ref(reference: str) -> ModelRef:
    """`NAME`, `NAME@alias`, `NAME/VERSION`, optionally prefixed by `models:/`; bare NAME means NAME@champion."""
    match = _REFERENCE.match(reference.strip())
    if not match:
        raise RegistryError(f"cannot read model reference {reference!r}; use NAME, NAME@alias or NAME/VERSION "
                            f"(optionally prefixed by models:/), e.g. models:/ctr@champion")
    name, alias, version = match.group("name"), match.group("alias"), match.group("version")
    if alias is None and version is None:
        alias = CHAMPION
    return ModelRef(name, alias, version)


def resolve_model_version(reference: str, client: MlflowClient | None = None):
    """The registry's ModelVersion a reference points at; a one-line ModelNotFoundError otherwise."""
    client = client or MlflowClient()
    ref = parse_model_ref(reference)
    require_registered_model(client, ref.name)
    try:
        if ref.alias:
            try:
                return client.get_model_version_by_alias(ref.name, ref.alias)
            except MlflowException:
                number = _VERSION_ALIAS.match(ref.alias)
                if number is None:
                    raise
                return client.get_model_version(ref.name, number.group(1))
        return client.get_model_version(ref.name, ref.version)
    except MlflowException:
        what = f"alias '{ref.alias}'" if ref.alias else f"version {ref.version}"
        raise ModelNotFoundError(f"registered model '{ref.name}' has no {what}; {_versions_hint(client, ref.name)}") \
            from None


def require_registered_model(client: MlflowClient, name: str):
    """The registered model `name`; a one-line ModelNotFoundError naming the close and known ones otherwise."""
    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = [m.name for m in client.search_registered_models(max_results=1000)
                 if not m.name.endswith(LOCK_SUFFIX)]
        known = f"; registered models: {', '.join(sorted(names)[:10])}" if names else "; the registry is empty"
        raise ModelNotFoundError(f"no registered model '{name}' in {client.tracking_uri}"
                                 f"{did_you_mean(name, names)}{known}") from None


def _versions_hint(client: MlflowClient, name: str) -> str:
    model = client.get_registered_model(name)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    aliases = ", ".join(f"@{a}" for a in sorted(model.aliases)) or "none"
    shown = ", ".join(map(str, versions[-10:])) or "none"
    return f"versions: {shown}; aliases: {aliases}"


@contextlib.contextmanager
def using_client(client: MlflowClient) -> Iterator[None]:
    """Point mlflow's fluent API (runs, load_model, downloads) at the client's stores for the duration, then
    restore the previous settings exactly (mlflow's setters also write MLFLOW_*_URI into the environment)."""
    tracking, registry = client.tracking_uri, client._registry_uri
    if mlflow.get_tracking_uri() == tracking and mlflow.get_registry_uri() == registry:
        yield
        return
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
