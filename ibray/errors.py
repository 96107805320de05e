"""Every error class of ibray, in one place at the bottom of the house: each module raises
these, the CLI catches them, and none of them needs the module that raises it. Each message
names what is wrong (the file, key or value) and how to fix it; the CLI prints it in one line
and exits 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is not allowed; the message says which and what is allowed."""


class SweepError(ConfigError):
    """A sweep file that cannot run; the message names the file, key, value and what is allowed."""


class DataError(Exception):
    """A data set is missing, unreadable or malformed; the message says how to fix it."""


class TrialStateError(RuntimeError):
    """A results folder or checkpoint that cannot be continued; the message says why."""


class StrayTrialError(TrialStateError):
    """Tune handed the trainable a config that is not one of its sweep's grid points."""


class VerifyError(ValueError):
    """A path that holds no trial to verify; the message says what to pass instead."""
