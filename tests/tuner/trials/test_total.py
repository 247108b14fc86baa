"""`study.n_trials` across workers: a trial started once the total is reached is not run. A dead worker's trial
holds its slot from the moment it is failed as stale until its retry is queued (two storage writes by the worker
that found it), so a new trial started in between does not overshoot the total (the team-mode 10-of-9 flake)."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import optuna
import pytest

from deepfm_tuner.tuner.stores.optuna_storage import MAX_STALE_RETRIES, RETRY_QUEUED_SECONDS
from deepfm_tuner.tuner.trials.names import ATTR_FAILURE, ATTR_SKIPPED
from deepfm_tuner.tuner.trials.objective import TotalReached, _check_total

State = optuna.trial.TrialState


def frozen(number: int, state: State, *, ago: float = 0.0, user_attrs=None, system_attrs=None):
    now = datetime.datetime.now()
    done = state not in (State.RUNNING, State.WAITING)
    return optuna.trial.FrozenTrial(
        number=number, state=state, value=0.7 if state == State.COMPLETE else None,
        datetime_start=now - datetime.timedelta(seconds=ago + 1),
        datetime_complete=now - datetime.timedelta(seconds=ago) if done else None, params={}, distributions={},
        user_attrs=user_attrs or {}, system_attrs=system_attrs or {}, intermediate_values={}, trial_id=number)


def runs(total: int, trials: list) -> bool:
    """Whether a new trial (numbered after `trials`) is run; one past the total is stopped and marked skipped."""
    number = len(trials)
    new = SimpleNamespace(number=number, attrs={}, study=SimpleNamespace(stopped=False))
    new.study.stop = lambda: setattr(new.study, "stopped", True)
    new.set_user_attr = new.attrs.__setitem__
    try:
        _check_total(new, total, [*trials, frozen(number, State.RUNNING)])
    except TotalReached:
        assert new.study.stopped and new.attrs == {ATTR_SKIPPED: "total reached"}
        return False
    return True


def test_a_dead_workers_trial_holds_its_slot_until_its_retry_is_queued():
    done = frozen(0, State.COMPLETE)
    dead = frozen(1, State.FAIL)  # failed as stale a moment ago: its worker said nothing
    assert not runs(2, [done, dead])  # the retry is being queued: a new trial would be the total's third
    retry = frozen(2, State.WAITING, system_attrs={"failed_trial": 1, "retry_history": [1]})
    assert runs(3, [done, dead, retry])  # the slot is counted once: the retry holds it now
    assert not runs(2, [done, dead, retry])


def test_a_failure_the_trial_said_or_a_skipped_trial_holds_no_slot():
    done = frozen(0, State.COMPLETE)
    assert runs(2, [done, frozen(1, State.FAIL, user_attrs={ATTR_FAILURE: {"reason": "KeyboardInterrupt: "}})])
    assert runs(2, [done, frozen(1, State.FAIL, user_attrs={ATTR_SKIPPED: "total reached"})])


@pytest.mark.parametrize("dead", [
    frozen(1, State.FAIL, ago=RETRY_QUEUED_SECONDS + 5),  # long ago and no retry came: none is coming
    frozen(1, State.FAIL, ago=-3600),  # a worker whose clock is an hour ahead: no hold, as before
    frozen(1, State.FAIL, system_attrs={"failed_trial": 90, "retry_history": list(range(90, 90 + MAX_STALE_RETRIES))}),
])
def test_a_dead_trial_with_no_retry_to_come_frees_its_slot(dead):
    assert runs(2, [frozen(0, State.COMPLETE), dead])
