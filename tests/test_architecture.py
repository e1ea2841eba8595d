"""The import arrows between the project's modules point the way the architecture says.

Every module under ``fedspeech/`` and ``attacks/`` is parsed (never imported) and each of its
imports read, at the top of the file and inside functions alike, relative ones resolved:

* **attacks** is a library that stands alone: besides itself and the standard library it
  imports only :data:`ATTACKS_MAY_IMPORT` and :data:`ATTACKS_THIRD_PARTY`, never ``flwr``;
  whatever needs a corpus or a run's configuration is passed in by its caller.
* **Layers** (:data:`LAYERS`): a module imports only from its own layer or below; on top,
  :data:`FORBIDDEN` pairs are never allowed, whatever their layers; only
  ``fedspeech.federation`` imports ``flwr``.
* **No cycles** between files. ``import a.b.c`` (or ``from a.b import c``, ``c`` a module) is
  an arrow to ``a.b.c`` only: Python runs the packages ``a`` and ``a.b`` first, but an arrow to
  every enclosing ``__init__`` would make each package that imports its children a cycle.
  An arrow to a package's ``__init__`` is drawn where a module imports a name from the
  package itself (``from a.b import helper``), so a child that imports from its parent's
  ``__init__`` while that ``__init__`` imports the child is a cycle, as it is at run time.
  Imports under ``if TYPE_CHECKING:`` never run and are left out of this rule only.

The checkers are plain functions of a source tree, also run on small synthetic trees below.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("fedspeech", "attacks")

# Layer of each part of the project: ``fedspeech.<part>`` (a package or a module), the
# root package ``fedspeech`` itself, and the ``attacks`` library as a whole.
LAYERS: dict[str, int] = {
    "fedspeech": 0,
    "errors": 0,
    "registry": 0,
    "fileio": 0,
    "cluster": 0,
    "capture": 0,
    "config": 0,
    "data": 1,
    "frontends": 1,
    "models": 1,
    "augment": 1,
    "metrics": 1,
    "training": 2,
    "attacks": 3,
    "tasks": 3,
    # Run preparation moved into fedspeech.tasks; the name keeps its rule for any new module.
    "prepare": 3,
    "audit": 4,
    "report": 4,
    "federation": 5,
    "cli": 6,
    "__main__": 6,
}
# (importer, imported) parts never allowed, whatever their layers.
FORBIDDEN: frozenset[tuple[str, str]] = frozenset(
    {
        ("training", "config"),
        ("training", "prepare"),
        ("training", "tasks"),
        ("config", "training"),
    }
)
# The only importer of Flower.
FLOWER_USERS = ("fedspeech.federation",)

ATTACKS_MAY_IMPORT = (
    "fedspeech.capture",
    "fedspeech.errors",
    "fedspeech.frontends",
    "fedspeech.metrics",
    "fedspeech.models",
    "fedspeech.registry",
)
ATTACKS_THIRD_PARTY = frozenset(
    # numerics and audio, safetensors for captures, then the scoring packages (speechbrain:
    # the optional ECAPA speaker encoder).
    {"torch", "numpy", "scipy", "librosa", "safetensors"}
    | {"pesq", "pystoi", "resemblyzer", "speechbrain"}
)


@dataclass(frozen=True)
class Import:
    """One import statement's arrow."""

    source: str  # the importing module
    target: str  # the imported module (a project module where one exists)
    line: int
    in_function: bool
    type_only: bool  # under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        where = " (in a function)" if self.in_function else ""
        return f"{self.source}:{self.line} imports {self.target}{where}"


def module_name(root: Path, path: Path) -> str:
    """``fedspeech/audit/__init__.py`` -> ``fedspeech.audit``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Reader(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.found: list[Import] = []
        self.depth = 0  # functions (and lambdas' enclosing functions) around the node
        self.type_only = 0

    def _add(self, target: str, node: ast.stmt) -> None:
        imp = Import(self.module, target, node.lineno, self.depth > 0, self.type_only > 0)
        if imp not in self.found:  # one arrow per statement and target
            self.found.append(imp)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.module.split(".")
            if not self.is_package:
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)


def read_imports(root: Path, packages: Sequence[str] = PACKAGES) -> tuple[set[str], list[Import]]:
    """The modules under ``root/<package>/`` and every import they make."""
    files = {
        module_name(root, path): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }
    modules = set(files)
    imports: list[Import] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        reader = _Reader(name, path.name == "__init__.py", modules)
        reader.visit(tree)
        imports += reader.found
    return modules, imports


def _top(name: str) -> str:
    return name.split(".")[0]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def part(module: str) -> str | None:
    """The :data:`LAYERS` key of a project module (None outside the project)."""
    names = module.split(".")
    if names[0] == "attacks":
        return "attacks"
    if names[0] != "fedspeech":
        return None
    return names[1] if len(names) > 1 else "fedspeech"


def attacks_violations(imports: Iterable[Import]) -> list[str]:
    """Imports of ``attacks`` modules outside what the library may use."""
    bad = []
    for imp in imports:
        if _top(imp.source) != "attacks":
            continue
        top = _top(imp.target)
        if top == "attacks" or top == "__future__" or top in sys.stdlib_module_names:
            continue
        if top == "fedspeech":
            if any(_within(imp.target, allowed) for allowed in ATTACKS_MAY_IMPORT):
                continue
        elif top in ATTACKS_THIRD_PARTY:
            continue
        bad.append(f"{imp}: attacks may not import it")
    return bad


def layer_violations(imports: Iterable[Import]) -> list[str]:
    """Arrows from a lower layer up, :data:`FORBIDDEN` pairs, misplaced ``flwr`` imports."""
    bad = []
    for imp in imports:
        src = part(imp.source)
        if src is None:
            continue
        if _top(imp.target) == "flwr":
            if not any(_within(imp.source, user) for user in FLOWER_USERS):
                bad.append(f"{imp}: only {', '.join(FLOWER_USERS)} may import Flower")
            continue
        dst = part(imp.target)
        if dst is None or src == dst:
            continue
        for name in (src, dst):
            if name not in LAYERS:
                bad.append(f"{imp}: {name!r} has no layer in LAYERS")
        if src not in LAYERS or dst not in LAYERS:
            continue
        if (src, dst) in FORBIDDEN:
            bad.append(f"{imp}: {src} must never import {dst}")
        elif LAYERS[dst] > LAYERS[src]:
            bad.append(f"{imp}: layer {LAYERS[src]} ({src}) imports layer {LAYERS[dst]} ({dst})")
    return bad


def import_cycles(modules: set[str], imports: Iterable[Import]) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a loop (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if not imp.type_only and imp.target in modules and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


# ------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def tree() -> tuple[set[str], list[Import]]:
    return read_imports(REPO)


def test_the_tree_is_read(tree: tuple[set[str], list[Import]]) -> None:
    modules, imports = tree
    assert {"attacks.features.fast", "fedspeech.audit.run", "fedspeech.cli"} <= modules
    # In-function and relative imports are seen too.
    assert any(i.in_function and _top(i.target) == "ray" for i in imports)
    assert all(i.target for i in imports)


def test_attacks_stand_alone(tree: tuple[set[str], list[Import]]) -> None:
    assert attacks_violations(tree[1]) == []


def test_layers(tree: tuple[set[str], list[Import]]) -> None:
    assert layer_violations(tree[1]) == []


def test_no_cycles(tree: tuple[set[str], list[Import]]) -> None:
    assert import_cycles(*tree) == []


# ----------------------------------------------------------------------- synthetic trees


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


CLEAN = {
    "fedspeech/__init__.py": "",
    "fedspeech/errors.py": "class FedspeechError(Exception): ...\n",
    "fedspeech/config.py": "from fedspeech.errors import FedspeechError\n",
    "fedspeech/training/__init__.py": "from fedspeech.training.local import train\n",
    "fedspeech/training/local.py": "from . import helpers\nimport torch\n",
    "fedspeech/training/helpers.py": "from ..errors import FedspeechError\n",
    "fedspeech/prepare.py": "from fedspeech.config import FedspeechError\n",
    "fedspeech/audit/__init__.py": "from fedspeech.audit.run import go\n",
    "fedspeech/audit/run.py": (
        "import attacks.x\nfrom fedspeech.prepare import FedspeechError\n"
        "def go():\n    from fedspeech.audit import helpers\n"
    ),
    "fedspeech/audit/helpers.py": "import os\n",
    "fedspeech/federation/__init__.py": "",
    "fedspeech/federation/app.py": "import flwr\nfrom fedspeech.audit import go\n",
    "attacks/__init__.py": "",
    "attacks/x.py": (
        "import numpy as np\nfrom fedspeech.capture import load\nfrom .y import z\n"
        "def f():\n    import resemblyzer\n"
    ),
    "attacks/y.py": "import json\nfrom fedspeech.errors import FedspeechError\n",
    "fedspeech/capture.py": "",
}


def check(root: Path) -> tuple[list[str], list[str], list[list[str]]]:
    modules, imports = read_imports(root)
    return attacks_violations(imports), layer_violations(imports), import_cycles(modules, imports)


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    assert check(write_tree(tmp_path, CLEAN)) == ([], [], [])


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    _, imports = read_imports(write_tree(tmp_path, CLEAN))
    targets = {(i.source, i.target) for i in imports}
    assert ("fedspeech.training.local", "fedspeech.training.helpers") in targets
    assert ("fedspeech.training.helpers", "fedspeech.errors") in targets
    assert ("attacks.x", "attacks.y") in targets
    assert ("fedspeech.audit.run", "fedspeech.audit.helpers") in targets


def test_attacks_importing_the_config_fails(tmp_path: Path) -> None:
    files = {**CLEAN, "attacks/z.py": "def f():\n    from fedspeech.config import X\n"}
    bad, _, _ = check(write_tree(tmp_path, files))
    assert bad == [
        "attacks.z:2 imports fedspeech.config (in a function): attacks may not import it"
    ]


@pytest.mark.parametrize(
    "line", ["import flwr.app", "from fedspeech.data import corpus", "import matplotlib"]
)
def test_attacks_importing_outside_their_list_fails(tmp_path: Path, line: str) -> None:
    bad, _, _ = check(write_tree(tmp_path, {**CLEAN, "attacks/z.py": line + "\n"}))
    assert len(bad) == 1 and bad[0].startswith("attacks.z:1 imports")


def test_training_importing_prepare_fails(tmp_path: Path) -> None:
    files = {**CLEAN, "fedspeech/training/y.py": "from fedspeech.prepare import X\n"}
    _, bad, _ = check(write_tree(tmp_path, files))
    assert bad == [
        "fedspeech.training.y:1 imports fedspeech.prepare: training must never import prepare"
    ]
    files = {**CLEAN, "fedspeech/training/y.py": "from fedspeech.federation import app\n"}
    _, bad, _ = check(write_tree(tmp_path / "a", files))
    assert bad == [
        "fedspeech.training.y:1 imports fedspeech.federation.app: layer 2 (training) imports "
        "layer 5 (federation)"
    ]
    # Below training's layer, but forbidden by name: training must not read the run config.
    files = {**CLEAN, "fedspeech/training/y.py": "from ..config import X\n"}
    _, bad, _ = check(write_tree(tmp_path / "b", files))
    assert bad == [
        "fedspeech.training.y:1 imports fedspeech.config: training must never import config"
    ]


def test_config_importing_training_and_flower_outside_federation_fail(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "fedspeech/config.py": "def f():\n    import fedspeech.training\nimport flwr\n",
    }
    _, bad, _ = check(write_tree(tmp_path, files))
    assert bad == [
        "fedspeech.config:2 imports fedspeech.training (in a function): config must never "
        "import training",
        "fedspeech.config:3 imports flwr: only fedspeech.federation may import Flower",
    ]


def test_unknown_parts_have_no_layer(tmp_path: Path) -> None:
    files = {**CLEAN, "fedspeech/newpart.py": "from fedspeech.errors import X\n"}
    _, bad, _ = check(write_tree(tmp_path, files))
    assert bad == ["fedspeech.newpart:1 imports fedspeech.errors: 'newpart' has no layer in LAYERS"]


def test_a_two_file_cycle_fails_even_through_a_function(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "attacks/y.py": "def f():\n    from attacks.x import g\n",
    }
    _, _, cycles = check(write_tree(tmp_path, files))
    assert cycles == [["attacks.x", "attacks.y"]]


def test_a_child_importing_its_parents_init_is_a_cycle(tmp_path: Path) -> None:
    # The parent's __init__ imports the child, which imports a name from the __init__.
    files = {**CLEAN, "fedspeech/audit/helpers.py": "from fedspeech.audit import go\n"}
    _, _, cycles = check(write_tree(tmp_path, files))
    assert cycles == [["fedspeech.audit", "fedspeech.audit.helpers", "fedspeech.audit.run"]]


def test_type_checking_imports_are_no_cycle(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "attacks/y.py": "import typing\nif typing.TYPE_CHECKING:\n    import attacks.x\n",
    }
    assert check(write_tree(tmp_path, files)) == ([], [], [])


def test_no_test_imports_another_test_file() -> None:
    """Tests share code through ``tests/helpers.py`` and fixtures, not by importing each other."""
    bad = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                last = name.split(".")[-1]
                if name.startswith("tests") and (last.startswith("test_") or last == "conftest"):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert bad == []
