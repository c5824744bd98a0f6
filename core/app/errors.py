"""The one error class of bad input (settings, data, files) shared by the apps."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input a user can fix: a setting out of range, a missing or malformed file, a run directory made with
    other settings. The runner prints ``error: <message>`` and exits with status 2."""
