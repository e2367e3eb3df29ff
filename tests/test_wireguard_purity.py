"""The protocol core stays sans-I/O: no module it loads imports socket, os, asyncio, ..."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import wiretun.wireguard

FORBIDDEN = frozenset({"socket", "os", "asyncio", "threading", "select", "time"})
PACKAGE_DIR = Path(wiretun.wireguard.__file__).parent


def imports_of(path: Path, module: str) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    # `if TYPE_CHECKING:` imports are for the type checker only: nothing runs them.
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            # `from pkg import mod` may name a submodule.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def wiretun_source(name: str) -> Path | None:
    if not (name == "wiretun" or name.startswith("wiretun.")):
        return None
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # "module.attribute" from a `from x import attr`
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def test_package_modules_found() -> None:
    modules = {p.stem for p in PACKAGE_DIR.glob("*.py")}
    assert {"device", "session", "replay", "timers", "allowedips", "peer"} <= modules


def test_no_io_imports_in_core_or_its_wiretun_dependencies() -> None:
    todo = [f"wiretun.wireguard.{p.stem}" for p in sorted(PACKAGE_DIR.glob("*.py"))]
    todo = [m.removesuffix(".__init__") for m in todo]
    seen: set[str] = set()
    offenders: list[str] = []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = wiretun_source(module)
        if path is None:
            continue
        for name in imports_of(path, module):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{module} imports {name}")
            # Importing a.b.c runs a/__init__ and a/b/__init__ too.
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if wiretun_source(prefix) is not None:
                    todo.append(prefix)
    assert {"wiretun", "wiretun.wireguard", "wiretun.wireguard.device"} <= seen
    assert offenders == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os.path\nfrom time import monotonic\nfrom . import socket\n")
    names = imports_of(bad, "wiretun.wireguard.bad")
    assert {"os.path", "time"} <= names
    assert any(n.split(".")[0] in FORBIDDEN for n in names)


def foreign_private_attributes(path: Path) -> list[str]:
    """`obj._name` uses in `path` (obj not self/cls) where no class of the same module
    defines `_name`: one module reaching into another's private state."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    own.add(sub.attr)
                elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    own.add(sub.value)  # __slots__ entries
                elif isinstance(sub, ast.FunctionDef | ast.AnnAssign):
                    name = sub.name if isinstance(sub, ast.FunctionDef) else ast.unparse(sub.target)
                    own.add(name)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
            and node.attr not in own
        ):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_module_of_the_core_touches_another_modules_private_state() -> None:
    offenders = [
        hit for p in sorted(PACKAGE_DIR.glob("*.py")) for hit in foreign_private_attributes(p)
    ]
    assert offenders == []


def test_private_state_checker_catches_a_reach_in(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "class A:\n    __slots__ = ('_mine',)\n    def f(self, o):\n"
        "        return o._mine, o._theirs, self._x\n"
    )
    assert foreign_private_attributes(bad) == ["bad.py:4 o._theirs"]
