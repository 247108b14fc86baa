"""`champion` put back: on the previous champion (read from the model's history) or on a chosen version.

A version whose stored files fail their checksums (or no longer load) is refused: the alias would point serving at
a model that cannot be served. The move holds the model's registry lock, as a promotion does, so a rollback and a
promotion at the same moment leave one champion and both events in the history.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient

from deepfm_tuner.model.checksums import CorruptPolicyError
from deepfm_tuner.tuner.registry.history import AliasEvent, alias_holder, move_alias, previous_champion, read_history
from deepfm_tuner.tuner.registry.lock import registry_lock
from deepfm_tuner.tuner.registry.pull import check_version
from deepfm_tuner.tuner.registry.refs import CHAMPION, RegistryError, require_registered_model, resolve_model_version


@dataclass(frozen=True)
class Rollback:
    name: str
    from_version: int | None
    to_version: int
    event: AliasEvent | None  # None: the version already was the champion, nothing moved


def rollback(client: MlflowClient, name: str, to_version: int | None = None) -> Rollback:
    """Point `champion` of `name` at `to_version`, or at the champion before the current one, and record it."""
    require_registered_model(client, name)
    with registry_lock(client, name, f"a rollback of '{name}'"):
        current = alias_holder(client, name, CHAMPION)
        target = to_version
        if target is None:
            target = previous_champion(read_history(client, name), current)
            if target is None:
                raise RegistryError(f"'{name}' has no earlier champion in its history (deepfm history {name}); pass "
                                    f"--to VERSION")
        mv = resolve_model_version(f"{name}/{target}", client)  # a version deleted since: one line
        if current == target:
            return Rollback(name, current, target, None)
        fix = f"roll back to another version (deepfm rollback {name} --to VERSION) or restore the store's files"
        try:
            check_version(mv, client, fix)
        except CorruptPolicyError as exc:
            raise CorruptPolicyError(f"refusing to make version {target} of '{name}' the champion: {exc}") from None
        reason = f"rolled back from version {current}" if current is not None else "rolled back (no champion)"
        if to_version is None:
            reason += " to the previous champion"
        event = move_alias(client, name, CHAMPION, target, action="rollback", reason=reason)
    return Rollback(name, current, target, event)

