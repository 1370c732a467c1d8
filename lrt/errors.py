"""Error types raised on bad input, and the unknown-key check every config section shares.

Every error carries a single-sentence message that names the offending file, line,
key or value, so a researcher can fix the input without reading a traceback.
"""

from collections.abc import Iterable, Mapping
from typing import Any


class LrtError(Exception):
    """Base class for every error lrt raises on purpose."""


class ConfigError(LrtError):
    """An unknown or invalid configuration value (raised before any model is loaded)."""


class DataError(LrtError):
    """A dataset that cannot be read: malformed row, missing field, empty split."""


class CheckpointError(LrtError):
    """A checkpoint or reasoner folder that is corrupt or belongs to another base model."""


class NonFiniteLossError(LrtError):
    """A NaN or infinite loss or gradient during training."""


def reject_unknown_keys(raw: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Name the first key of config section `where` that is not one of `known`: a misspelt key
    would otherwise be silently ignored, or fail later as a bare TypeError."""
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key '{where}.{unknown[0]}'")


def one_line(err: BaseException) -> str:
    """The telling part of an exception's message: torch's run to paragraphs."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[0].split(". ", 1)[0]
