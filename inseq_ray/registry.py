"""One tiny helper shared by every plugin registry (methods, step scores, aggregation functions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from inseq_ray.errors import UnknownIdError

__all__ = ["UnknownIdError", "lookup", "register"]

T = TypeVar("T")


def lookup(registry: Mapping[str, T], key: str, family: str) -> T:
    """Return ``registry[key]`` or raise an error naming the valid ids of ``family``."""
    try:
        return registry[key]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(registry))
        raise UnknownIdError(f"Unknown {family} {key!r}. Valid ids: {valid}.") from None


def register(registry: dict[str, T], key: str, value: T, family: str, overwrite: bool = False) -> None:
    """Add ``value`` under ``key``; refuse to replace an existing id unless ``overwrite``."""
    if key in registry and not overwrite:
        raise ValueError(f"{family} {key!r} is already registered; pass overwrite=True to replace it.")
    registry[key] = value
