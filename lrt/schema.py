"""Typed settings from config nodes: OmegaConf's structured configs check the keys and types,
the dataclass's own `__post_init__` checks the values, and any failure is one line.

Every config group has a dataclass whose fields are its keys (with their meaning documented
once, beside the field); `typed(Settings, node, "group")` is the only way a node becomes
settings, so an unknown or mistyped key anywhere gives the same error: `unknown key 'x.y'`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lrt.errors import ConfigError

T = TypeVar("T")


def plain(node: Any) -> Any:
    """A config node as plain containers, interpolations resolved against its own root."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def typed(cls: type[T], node: Any, where: str) -> T:
    """`node` (a config node, a mapping or an instance of `cls`) as a checked `cls`."""
    if isinstance(node, cls):
        return node
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), plain(node or {})))
    except ConfigKeyError as err:
        raise ConfigError(f"unknown key '{where}.{err.full_key}'") from None
    except OmegaConfBaseException as err:
        message = str(err).splitlines()[0]
        raise ConfigError(f"{where}.{err.full_key}: {message}") from None
