"""Which version held `champion` (or `challenger`) when, and why: every alias move the platform makes, recorded on
the registered model itself.

MLflow keeps no record of alias moves (mlflow/mlflow#2169), so "what was serving last Tuesday, and put it back"
has no answer in the registry alone. Each move made here (first champion, replaced, kept as challenger, baseline
guard, forced, rollback) is one registered-model tag, so the record lives wherever the registry does (the
embedded SQLite store or any tracking server) and travels with the model:

    key    deepfm.history.<UTC time to the microsecond>.<8 random hex>   sorts by time; unique without a read
    value  JSON: time, action, alias, from/to versions, their test AUCs, the study, the reason, who moved it

One tag per event, written once and never rewritten: no read-modify-write of a shared value, so two writers
cannot lose each other's event (the moves themselves are serialised by registry.lock). A value stays far under
MLflow's limits for a registered-model tag (3.17: 250 characters of key, 100,000 of value): the reason is cut
at 2,000 characters.
"""

from __future__ import annotations

import getpass
import json
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from deepfm_tuner.tuner.registry.refs import CHALLENGER, CHAMPION

TAG_PREFIX = "deepfm.history."
TAG_TEST_AUC, TAG_STUDY = "test_auc", "study"  # version tags the events copy (written by registry.promotion)
MAX_REASON = 2_000
# the moves, as `deepfm history` names them; a promotion's gate decision maps onto the first five
ACTIONS = ("first_champion", "replaced", "kept_challenger", "baseline_guard", "forced", "rollback")
ACTION_OF_DECISION = {"first_champion": "first_champion", "promoted": "replaced", "kept_challenger": "kept_challenger",
                      "forced": "forced"}


@dataclass(frozen=True)
class AliasEvent:
    time: str  # UTC, ISO 8601 to the microsecond
    action: str  # one of ACTIONS
    alias: str
    from_version: int | None  # None: the alias was unset
    to_version: int
    from_test_auc: float | None
    to_test_auc: float | None
    study: str
    reason: str
    by: str  # user@host

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> AliasEvent:
        fields = json.loads(text)
        return cls(**{k: fields.get(k) for k in cls.__dataclass_fields__})


def move_alias(client: MlflowClient, name: str, alias: str, version: int, *, action: str,
               reason: str) -> AliasEvent | None:
    """Point `alias` at `version` and record the move; None (and nothing recorded) when it already points there.
    A version that becomes champion stops being the challenger."""
    if action not in ACTIONS:
        raise ValueError(f"unknown alias move {action!r}; one of {', '.join(ACTIONS)}")
    previous = alias_holder(client, name, alias)
    if previous == version:
        return None
    client.set_registered_model_alias(name, alias, str(version))
    if alias == CHAMPION and alias_holder(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    to_tags = client.get_model_version(name, str(version)).tags or {}
    from_tags = {} if previous is None else _tags(client, name, previous)
    event = AliasEvent(
        time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), action=action, alias=alias,
        from_version=previous, to_version=version, from_test_auc=_float(from_tags.get(TAG_TEST_AUC)),
        to_test_auc=_float(to_tags.get(TAG_TEST_AUC)), study=to_tags.get(TAG_STUDY, ""), reason=reason[:MAX_REASON],
        by=f"{_user()}@{socket.gethostname()}")
    key = f"{TAG_PREFIX}{event.time.replace('-', '').replace(':', '')}.{uuid.uuid4().hex[:8]}"
    client.set_registered_model_tag(name, key, json.dumps(event.to_dict(), separators=(",", ":")))
    return event


def read_history(client: MlflowClient, name: str) -> list[AliasEvent]:
    """The recorded moves of `name`'s aliases, newest first."""
    tags = client.get_registered_model(name).tags or {}
    events = []
    for key in sorted((k for k in tags if k.startswith(TAG_PREFIX)), reverse=True):
        try:
            events.append(AliasEvent.from_json(tags[key]))
        except (ValueError, TypeError, AttributeError):  # a tag edited by hand into something else: not an event
            continue
    return events


def previous_champion(events: list[AliasEvent], current: int | None) -> int | None:
    """The version that held `champion` before `current` did, read as a stack from the history (newest first):
    a promotion pushes its version, a rollback returns to an earlier one, so rolling back twice goes two steps
    back, not back and forth. None when the history has nothing before `current`."""
    stack: list[int] = []
    for event in reversed(events):
        if event.alias != CHAMPION:
            continue
        if event.action == "rollback" and event.to_version in stack:
            del stack[len(stack) - stack[::-1].index(event.to_version):]
            continue
        if not stack and event.from_version is not None:
            stack.append(event.from_version)
        if not stack or stack[-1] != event.to_version:
            stack.append(event.to_version)
    if current not in stack:
        return None
    at = len(stack) - 1 - stack[::-1].index(current)
    return stack[at - 1] if at > 0 else None


def alias_holder(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _tags(client: MlflowClient, name: str, version: int) -> dict:
    try:
        return client.get_model_version(name, str(version)).tags or {}
    except MlflowException:  # a version deleted since
        return {}


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "unknown"
