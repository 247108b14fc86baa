"""User-facing errors: one line that names the problem and the fix. The CLI prints them and exits 2."""

from __future__ import annotations

import difflib
from typing import Iterable


class UserInputError(ValueError):
    """Bad config, data or arguments supplied by the user (never a bug in this package)."""


class ConfigError(UserInputError):
    """A config file or value is invalid."""


class DataError(UserInputError):
    """A data file or column is invalid."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the reason names the epoch and a remedy."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
