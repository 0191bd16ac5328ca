"""Typed errors raised by latentlm.

Every failure caused by user input is one of these, with a message that says
what was wrong and how to fix it. They subclass the closest builtin so that
callers catching ``ValueError`` / ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class LatentLMError(Exception):
    """Base class of every error latentlm raises on purpose."""


class ConfigError(LatentLMError, ValueError):
    """A preset, config file or ``--set`` override is invalid."""


class DataError(LatentLMError, ValueError):
    """A data file or folder is missing, empty, unreadable or malformed."""


class InputError(LatentLMError, ValueError):
    """An argument to a public function is out of range or of the wrong shape."""


class CheckpointError(LatentLMError, RuntimeError):
    """A checkpoint or saved model folder is missing, corrupt or incompatible."""


class TrainingDivergedError(LatentLMError, RuntimeError):
    """The training loss became NaN or infinite."""


def check_text(text: object, what: str = "prompt") -> str:
    """Return ``text`` if it is a string encodable as UTF-8, else raise InputError."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} is not valid Unicode text ({e.reason} at position {e.start})") from None
    return text


def check_choice(where: str, value: object, choices: tuple) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices`` (every enum-like setting: a model's
    constructor argument and its preset key alike)."""
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")
