"""Error types raised on bad input.

Every error carries a single-sentence message that names the offending file, line,
key or value, so a researcher can fix the input without reading a traceback.
"""


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
