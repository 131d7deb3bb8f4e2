"""Plain dicts (presets, JSON, YAML, ``--set`` overrides) into config dataclasses, without letting typos pass.

One override syntax serves presets (``--set section.key=value``) and sweep configurations
(``--set key.path=value``): the text after ``=`` is read as YAML, so ``grid.seed=[0, 1]`` is a list
and ``pretrained=null`` is None. YAML 1.1 reads ``1e3`` and ``1e-3`` as *strings* (a float needs a
``.`` and a signed exponent: ``1.0e-3``); :func:`strict_from_dict` rejects such a string where a
number belongs, and says so, instead of letting it fail later inside the stage.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import fields
from typing import Any, Collection, Iterable, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class OverrideError(ValueError):
    """An override that cannot be applied: the ``override`` text, the ``key`` path at fault and the ``reason``."""

    def __init__(self, origin: str, override: str, key: str, reason: str) -> None:
        super().__init__(f"{origin}: override {override!r}: key {key!r}: {reason}")
        self.override = override
        self.key = key
        self.reason = reason


def _form(depth: int | None) -> str:
    return "key.path=value" if depth is None else ".".join(["section"] * (depth - 1) + ["key"]) + "=value"


def parse_override(text: str, *, origin: str = "--set", depth: int | None = None) -> tuple[tuple[str, ...], Any]:
    """``"a.b=VALUE"`` -> ``(("a", "b"), VALUE read as YAML)``; ``depth``: the exact number of keys (None: any)."""
    path, sep, raw = text.partition("=")
    path = path.strip()
    keys = tuple(path.split("."))
    if not sep or not all(keys):
        raise OverrideError(origin, text, path or text, f"must look like {_form(depth)}")
    if depth is not None and len(keys) != depth:
        raise OverrideError(origin, text, path, f"must look like {_form(depth)} ({depth} keys, not {len(keys)})")
    try:
        return keys, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise OverrideError(origin, text, path, f"value {raw!r} is not valid YAML ({reason})") from exc


def apply_overrides(mapping: Mapping[str, Any], overrides: Iterable[str], *, origin: str = "--set",
                    depth: int | None = None, known: Collection[str] | None = None) -> dict[str, Any]:
    """A deep copy of ``mapping`` with each ``key.path=value`` override applied, in order.

    ``known``: the allowed first keys (None: any). A missing or null mapping on the way is created
    (``scheduler.type=asha`` over ``scheduler: null``). Every problem is an :class:`OverrideError`.
    """
    result = copy.deepcopy(dict(mapping))
    for text in overrides:
        keys, value = parse_override(text, origin=origin, depth=depth)
        if known is not None and keys[0] not in known:
            raise OverrideError(origin, text, keys[0], f"unknown; known: {', '.join(sorted(known))}")
        node = result
        for end, key in enumerate(keys[:-1], start=1):
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise OverrideError(origin, text, ".".join(keys[:end]), "is not a mapping, so it has no sub-keys")
        node[keys[-1]] = value
    return result


def strict_from_dict(cls: type[T], d: Mapping[str, Any], section: str) -> T:
    """``cls(**d)``, but an unknown key or a value of the wrong type is a ValueError naming ``section.key``."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {section} keys {unknown}; known keys: {sorted(known)}")
    hints = get_type_hints(cls)
    for key, value in d.items():
        if not _fits(hints[key], value):
            raise ValueError(f"{section}.{key} must be {_type_name(hints[key])}, got {value!r} "
                             f"({type(value).__name__}){_yaml_number_hint(value)}")
    return cls(**d)


def _fits(hint: Any, value: Any) -> bool:
    """Whether a plain (YAML/JSON) value fits an annotation; kinds not listed here are left to the class."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(arg, value) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (tuple, list):  # YAML has no tuples: a list stands for either
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(a, v) for a, v in zip(args, value))
        return all(_fits(args[0], v) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) and not get_args(hint) else str(hint).replace("typing.", "")


def _yaml_number_hint(value: Any) -> str:
    """For a number YAML 1.1 left as text (``1e3``, ``1e-3``): how to write it so it parses as one."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        spelling = ".nan" if math.isnan(number) else ("-.inf" if number < 0 else ".inf")
    elif number.is_integer() and abs(number) < 1e16:
        spelling = str(int(number))
    else:
        mantissa, _, exponent = repr(number).partition("e")  # repr's exponent is signed: 1e-05
        spelling = mantissa + ("" if "." in mantissa or not exponent else ".0") + (f"e{exponent}" if exponent else "")
    return f"; YAML reads {value} as text: write {spelling}"
