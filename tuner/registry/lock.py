"""One promotion (or rollback) of a registered model at a time, on one machine or many: a lock kept in the registry.

A promotion looks for its checkpoint among the versions, registers it if absent, compares it with the champion and
moves an alias. Two at once (two `deepfm tune` processes finishing one study, team workers on several machines, a
promotion and a rollback) would each register the same run, or each move `champion` away from a version the other
has just replaced. A file lock serves one machine only, and register-then-dedupe settles duplicate versions but not
alias moves (MLflow has no compare-and-set on an alias). What every process of a team shares is the tracking
server, and the one atomic operation every MLflow registry offers (SQL store or REST server) is creating a
registered model: a second create of the same name fails with RESOURCE_ALREADY_EXISTS. So the lock is a registered
model, `NAME.lock`, created to take it and deleted to give it back, whatever ends the block.

Its tags name the holder (host, pid, what it does); a heartbeat tag, rewritten by a thread while the lock is held,
proves the holder alive. A waiter polls, and takes over a lock whose holder is a dead process on this machine, or
whose heartbeat has not changed for `stale_after_s` by the waiter's own clock (no clocks are compared across
machines); after `wait_s` it gives up with one line naming the holder.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from deepfm_tuner.tuner.registry.refs import RegistryError, lock_name
from deepfm_tuner.tuner.stores.retry import retry

TAG_OWNER, TAG_PURPOSE, TAG_HEARTBEAT = "deepfm.lock.owner", "deepfm.lock.purpose", "deepfm.lock.heartbeat"
HEARTBEAT_S, STALE_AFTER_S, WAIT_S, POLL_S = 5.0, 60.0, 900.0, 0.25


class RegistryBusyError(RegistryError):
    """Another promotion or rollback of the model held its lock for longer than this one waits."""


@dataclass(frozen=True)
class Holder:
    owner: str  # host:pid:token
    purpose: str
    heartbeat: str
    created: int  # the lock model's creation time (ms): tells a re-taken lock from the one seen before

    def dead_here(self) -> bool:
        """The holder is a process of this machine that no longer runs."""
        host, _, rest = self.owner.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self) -> str:
        host, _, rest = self.owner.partition(":")
        return f"{self.purpose} on {host} (pid {rest.partition(':')[0]})"


@contextlib.contextmanager
def registry_lock(client: MlflowClient, name: str, purpose: str, *, wait_s: float = WAIT_S,
                  stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Hold the registered model `name`'s lock for the block (see the module docstring)."""
    lock = lock_name(name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _acquire(client, lock, owner, purpose, wait_s, stale_after_s)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(client, lock, stop, heartbeat_s), daemon=True,
                            name=f"heartbeat {lock}")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        _release(client, lock, owner)


def read_holder(client: MlflowClient, lock: str) -> Holder | None:
    try:
        model = client.get_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    tags = model.tags or {}
    return Holder(tags.get(TAG_OWNER, "?:?"), tags.get(TAG_PURPOSE, "a promotion"), tags.get(TAG_HEARTBEAT, ""),
                  int(model.creation_timestamp or 0))


def _acquire(client: MlflowClient, lock: str, owner: str, purpose: str, wait_s: float, stale_after_s: float) -> None:
    deadline = time.monotonic() + wait_s
    seen, changed_at = None, time.monotonic()
    while True:
        holder = retry(read_holder, client, lock)
        if holder is None:
            if retry(_create, client, lock, owner, purpose):
                return
            continue
        if holder.owner == owner:  # our create went through although its answer was lost
            return
        if (holder.created, holder.heartbeat) != seen:
            seen, changed_at = (holder.created, holder.heartbeat), time.monotonic()
        if holder.dead_here() or time.monotonic() - changed_at > stale_after_s:
            _break(client, lock, holder)
            continue
        if time.monotonic() > deadline:
            raise RegistryBusyError(
                f"registered model '{lock.removesuffix('.lock')}' is locked by {holder.describe()} for over "
                f"{wait_s:.0f}s; retry when it ends, or if that process is gone, delete the registered model "
                f"'{lock}' (MLflow UI or MlflowClient().delete_registered_model)")
        time.sleep(POLL_S * (0.5 + random.random()))


def _create(client: MlflowClient, lock: str, owner: str, purpose: str) -> bool:
    """True when this call created the lock; False when another process got there first."""
    try:
        client.create_registered_model(
            lock, tags={TAG_OWNER: owner, TAG_PURPOSE: purpose, TAG_HEARTBEAT: f"{time.time():.3f}"},
            description=f"deepfm: held while {purpose} runs on {socket.gethostname()} (pid {os.getpid()}); deleted "
                        f"when it ends")
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise


def _break(client: MlflowClient, lock: str, stale: Holder) -> None:
    """Delete a stale lock, unless it was re-taken since it was judged stale."""
    again = read_holder(client, lock)
    if again is not None and (again.owner, again.created) == (stale.owner, stale.created):
        _delete(client, lock)


def _release(client: MlflowClient, lock: str, owner: str) -> None:
    """Give the lock back if it is still ours (a waiter may have taken over a lock it judged stale)."""
    with contextlib.suppress(Exception):  # best effort: a lock left behind goes stale and is taken over
        holder = retry(read_holder, client, lock)
        if holder is not None and holder.owner == owner:
            retry(_delete, client, lock)


def _delete(client: MlflowClient, lock: str) -> None:
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _heartbeat(client: MlflowClient, lock: str, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(Exception):  # a missed beat only brings a takeover closer
            client.set_registered_model_tag(lock, TAG_HEARTBEAT, f"{time.time():.3f}")
