"""What the libraries we drive may print, set by the entry point (never on import): no telemetry or prompts,
MLflow and alembic at warnings, and Optuna's failed-trial lines reduced to what a person needs."""

from __future__ import annotations

import logging
import os
import re
import warnings

from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.stores.disks import is_disk_error

TRIAL_LOG = "optuna.study._optimize"  # where Optuna reports a trial's end


def quiet_defaults() -> None:
    """Before MLflow is imported: no telemetry, no interactive prompts, no noisy logging."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # e.g. "Creating initial MLflow database tables..."
    logging.getLogger("alembic").setLevel(logging.WARNING)
    trial_log = logging.getLogger(TRIAL_LOG)
    for kind in (_OneLineTrialFailures, _HideSkippedTrials):
        if not any(isinstance(f, kind) for f in trial_log.filters):
            trial_log.addFilter(kind())


def quiet_optuna() -> None:
    """For the commands that run or read studies: Optuna at warnings (our progress view reports trials).
    Optuna sets its own level when it is first imported, so this imports it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class _OneLineTrialFailures(logging.Filter):
    """Optuna logs a failed trial as a warning with its traceback, then 'Trial N failed with value None.'.
    Ctrl-C: neither (the CLI prints its one line); a user error (e.g. a model too large for memory): only the
    first warning, which names the reason, without the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        found = re.match(r"Trial (\d+) failed", record.getMessage())
        if found and found.group(1) in self.handled and record.getMessage().endswith("failed with value None."):
            return False
        expected = isinstance(error, UserInputError) or is_disk_error(error)  # the user's to fix: no traceback
        if (isinstance(error, KeyboardInterrupt) or expected) and found:
            self.handled.add(found.group(1))
        if isinstance(error, KeyboardInterrupt):
            return False
        if expected:
            record.exc_info, record.exc_text = None, None
        return True


class _HideSkippedTrials(logging.Filter):
    """A trial claimed after the total was reached fails on purpose (TotalReached); no traceback for that."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        found = re.match(r"Trial (\d+) failed", message)
        if found and "TotalReached" in message:
            self.numbers.add(found.group(1))
            return False
        return not (found and found.group(1) in self.numbers and message.endswith("failed with value None."))
