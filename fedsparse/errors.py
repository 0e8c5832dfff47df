"""User-facing errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations


class FedsparseError(Exception):
    """An error caused by the user's input (config, flags, data files).

    The message is printed as a single line; the CLI exits with status 2.
    """

    exit_code = 2


class ConfigError(FedsparseError):
    """A config file, key or value that cannot be used."""


class DataError(FedsparseError):
    """A data folder or file that is missing or malformed."""


class SimulationError(FedsparseError):
    """The simulation could not run to completion."""

    exit_code = 1
