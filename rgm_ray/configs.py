"""Building config dataclasses from plain dicts (presets, JSON, YAML) without letting typos pass."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: Mapping[str, Any], section: str) -> T:
    """``cls(**d)``, but an unknown key is a ValueError naming the section and the known keys."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {section} key(s) {unknown}; known: {sorted(known)}")
    return cls(**d)
