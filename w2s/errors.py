"""The user-facing errors: each one is a refusal the CLI prints as one line and exits 2 on, never a traceback.

Every stage raises one of these for a mistake in what the user handed it (a config, a dataset, a model folder,
a cache); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A refusal caused by the user's input; the message names the file, row and field (or the model and path)."""


class ConfigError(UserError):
    """A config file or override that does not fit the schema; the message names the key."""


class DataError(UserError):
    """A dataset that cannot be cached as it is; the message names the file, row and field."""


class CacheMismatch(UserError):
    """A cache that does not match what a stage was handed; the message says what differs."""
