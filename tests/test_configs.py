"""The one override parser (presets and sweep configs) and strict dict -> dataclass building."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rgm_ray.configs import OverrideError, apply_overrides, parse_override, strict_from_dict


@dataclass(frozen=True)
class Toy:
    count: int = 1
    rate: float = 0.5
    name: str | None = None
    flags: tuple[str, ...] = ()
    on: bool = False


def test_parse_override_reads_values_as_yaml() -> None:
    assert parse_override("grid.seed=[0, 1]") == (("grid", "seed"), [0, 1])
    assert parse_override(" a.b.c = null") == (("a", "b", "c"), None)
    assert parse_override("name=x=y") == (("name",), "x=y")
    assert parse_override("lr=1.0e-3")[1] == 0.001 and parse_override("lr=1e-3")[1] == "1e-3"  # YAML 1.1


@pytest.mark.parametrize(("text", "depth", "key", "reason"), [
    ("nonsense", None, "nonsense", "key.path=value"),
    ("a..b=1", None, "a..b", "key.path=value"),
    ("=1", None, "=1", "key.path=value"),
    ("nonsense", 2, "nonsense", "section.key=value"),
    ("a.b.c=1", 2, "a.b.c", "section.key=value (2 keys, not 3)"),
    ("a=[1", None, "a", "is not valid YAML"),
])
def test_malformed_overrides_name_the_override_and_key(text, depth, key, reason) -> None:
    with pytest.raises(OverrideError) as caught:
        parse_override(text, origin="here", depth=depth)
    assert (caught.value.key, caught.value.override) == (key, text) and reason in caught.value.reason
    message = str(caught.value)
    assert message.startswith(f"here: override {text!r}: key {key!r}:") and "\n" not in message


def test_apply_overrides_copies_and_creates_sections() -> None:
    raw = {"grid": {"seed": [0]}, "scheduler": None}
    out = apply_overrides(raw, ["grid.seed=[1, 2]", "train.epochs=3", "scheduler.type=asha", "train.epochs=4"])
    assert out == {"grid": {"seed": [1, 2]}, "scheduler": {"type": "asha"}, "train": {"epochs": 4}}
    assert raw == {"grid": {"seed": [0]}, "scheduler": None}


def test_apply_overrides_errors() -> None:
    with pytest.raises(OverrideError, match=r"key 'grid.seed': is not a mapping"):
        apply_overrides({"grid": {"seed": [0]}}, ["grid.seed.x.y=1"])
    with pytest.raises(OverrideError, match=r"override 'gen.k=1': key 'gen': unknown; known: data, generate$"):
        apply_overrides({"data": {}, "generate": {}}, ["gen.k=1"], known={"generate", "data"}, depth=2)


def test_strict_from_dict_checks_keys_and_types() -> None:
    assert strict_from_dict(Toy, {"count": 3, "rate": 1, "name": None, "flags": ["a"], "on": True}, "toy") == \
        Toy(3, 1, None, ["a"], True)  # an int is a float; a YAML list stands for a tuple (the class converts)
    with pytest.raises(ValueError, match=r"unknown toy keys \['cuont'\]; known keys: \['count'"):
        strict_from_dict(Toy, {"cuont": 1}, "toy")
    with pytest.raises(ValueError, match=r"^toy.count must be int, got '1e3' \(str\); YAML reads 1e3 as text: "
                                         r"write 1000$"):
        strict_from_dict(Toy, {"count": "1e3"}, "toy")
    for key, value in [("count", 2.0), ("count", True), ("rate", "fast"), ("name", 3), ("flags", "a"),
                       ("flags", [1]), ("on", 1)]:
        with pytest.raises(ValueError, match=rf"^toy\.{key} must be "):
            strict_from_dict(Toy, {key: value}, "toy")


def test_preset_override_errors_name_section_and_field() -> None:
    from rgm_ray.pipeline.presets import load_preset

    with pytest.raises(ValueError, match=r"preset section 'train_vae': train\.lr must be float, got '1e-3'"):
        load_preset("tiny", ["train_vae.lr=1e-3"])
    with pytest.raises(OverrideError, match=r"preset 'tiny': override 'trian_vae.lr=1': key 'trian_vae': unknown"):
        load_preset("tiny", ["trian_vae.lr=1"])
    assert load_preset("tiny", ["train_vae.lr=1.0e-3"])["train_vae"]["lr"] == 0.001
