"""The import direction (rgm_ray.layers) holds for the real tree, and the checker bites on a toy package.

Everything is read with ``ast``: nothing here imports torch or Ray.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rgm_ray.layers import Layer, check, import_graph, main, upward_imports

TOY_LAYERS = (
    Layer("base", ("__init__", "base")),
    Layer("low", ("low", "low_extra")),
    Layer("high", ("high",)),
    Layer("side", ("side",), beside="high"),
)
CLEAN = {
    "toy/__init__.py": "",
    "toy/base.py": "VALUE = 1\n",
    "toy/low/__init__.py": "from toy.low.a import thing\n",
    "toy/low/a.py": "from toy.base import VALUE\n\nthing = VALUE\n",
    "toy/low/b.py": "import toy.low.a\n",
    "toy/high.py": "from toy.low import thing\nfrom toy import side\n",
    "toy/side.py": "import toy.base\n",
}


def toy(tmp_path: Path, **changes: str):
    """Write the toy package with ``changes`` (path with ``/`` as ``__``) and return its violations."""
    files = {**CLEAN, **{name.replace("__", "/") + ".py": text for name, text in changes.items()}}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    graph = import_graph(tmp_path, roots=("toy",))
    return graph, check(graph, TOY_LAYERS, package="toy")


def test_rgm_ray_imports_run_one_way() -> None:
    violations = check(import_graph())
    if violations:
        pytest.fail("import-direction violations (python -m rgm_ray.layers --check):\n"
                    + "\n".join(map(str, violations)), pytrace=False)


def test_layer_graph_prints_without_importing_stages(capsys) -> None:
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("core") and any(line.startswith("pipelines") for line in lines)


def test_clean_toy_package_passes(tmp_path) -> None:
    graph, violations = toy(tmp_path)
    assert violations == []
    assert ("toy.high", "toy.side") in {(i.source, i.target) for i in graph.imports}  # beside: allowed


def test_upward_import_is_caught(tmp_path) -> None:
    _, violations = toy(tmp_path, toy__low__a="import toy.side\n")
    assert [(v.kind, v.modules) for v in violations] == [("upward", ("toy.low.a", "toy.side"))]
    assert "toy/low/a.py:1" in str(violations[0])
    _, violations = toy(tmp_path, toy__low__a="import toy.high\n")  # and high imports low back: also a cycle
    assert [(v.kind, v.modules) for v in violations] == [("cycle", ("toy.high", "toy.low", "toy.low.a")),
                                                         ("upward", ("toy.low.a", "toy.high"))]


def test_module_cycle_is_caught(tmp_path) -> None:
    _, violations = toy(tmp_path, toy__low__a="from toy.low import b\n")
    assert [(v.kind, v.modules) for v in violations] == [("cycle", ("toy.low.a", "toy.low.b"))]


def test_package_cycle_within_a_layer_is_caught(tmp_path) -> None:
    _, violations = toy(tmp_path, toy__low_extra="import toy.low.a\n", toy__low__b="import toy.low_extra\n",
                        toy__low__a="def f():\n    import toy.low_extra\n")
    kinds = [(v.kind, v.modules) for v in violations]
    assert ("package-cycle", ("low", "low_extra")) not in kinds  # low.a <-> low_extra is a module cycle
    assert ("cycle", ("toy.low.a", "toy.low_extra")) in kinds
    _, violations = toy(tmp_path, toy__low_extra="import toy.low.a\n", toy__low__b="import toy.low_extra\n",
                        toy__low__a="")
    assert [(v.kind, v.modules) for v in violations] == [("package-cycle", ("low", "low_extra"))]


def test_relative_and_function_level_imports_are_seen(tmp_path) -> None:
    graph, violations = toy(tmp_path, toy__low__b="""\
        from . import a
        from .a import thing
        from .. import base


        def late():
            from ..high import VALUE
            return VALUE
        """)
    edges = {(i.source, i.target, i.function_level) for i in graph.imports if i.source == "toy.low.b"}
    assert edges == {("toy.low.b", "toy.low.a", False), ("toy.low.b", "toy.base", False),
                     ("toy.low.b", "toy.high", True)}
    assert [(v.kind, v.modules) for v in violations] == [("upward", ("toy.low.b", "toy.high"))]
    assert "function-level" in str(violations[0])


def test_type_checking_imports_are_noted_not_counted(tmp_path) -> None:
    graph, violations = toy(tmp_path, toy__low__a="""\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from toy.high import Thing
        else:
            import toy.base
        """)
    assert violations == []
    [noted] = upward_imports(graph, TOY_LAYERS, package="toy")
    assert (noted.source, noted.target, noted.type_only) == ("toy.low.a", "toy.high", True)
    assert ("toy.low.a", "toy.base", False) in {(i.source, i.target, i.type_only) for i in graph.imports}


def test_module_outside_every_layer_is_caught(tmp_path) -> None:
    _, violations = toy(tmp_path, toy__stray="")
    assert [(v.kind, v.modules) for v in violations] == [("unplaced", ("toy.stray",))]
