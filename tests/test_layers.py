"""The import direction between the layers: the product never imports the in-memory kit
(wiretun.testing), the lab (wiretun.lab), the commands built on the lab (bench, demo) or the
tests; the kit never imports the lab; the lab never imports what is built on it.

Every import statement counts, also those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
TESTS_PACKAGES = ("scenarios", "fuzz", "tests", "conftest")
KIT = "wiretun.testing"
LAB = "wiretun.lab"
ON_THE_LAB = ("wiretun.bench", "wiretun.demo")

# What each layer must not import (prefixes of module names).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "product": (KIT, LAB, *ON_THE_LAB, *TESTS_PACKAGES),
    KIT: (LAB, *ON_THE_LAB, *TESTS_PACKAGES),
    LAB: (KIT, *ON_THE_LAB, *TESTS_PACKAGES),
    "on the lab": (KIT, *TESTS_PACKAGES),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str:
    if is_within(module, KIT):
        return KIT
    if is_within(module, LAB):
        return LAB
    if any(is_within(module, m) for m in ON_THE_LAB):
        return "on the lab"
    return "product"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved; `from X import Y` counts
    as X and X.Y (Y may be a submodule)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def sources() -> list[Path]:
    return sorted(SRC.joinpath("wiretun").rglob("*.py"))


def violations() -> list[str]:
    bad = []
    for path in sources():
        module = module_name(path)
        forbidden = FORBIDDEN[layer_of(module)]
        for target in sorted(imports_of(path)):
            if any(is_within(target, f) for f in forbidden):
                bad.append(f"{module} ({layer_of(module)}) imports {target}")
    return bad


def test_every_layer_imports_only_downwards() -> None:
    assert violations() == []


def test_the_walker_sees_the_layers_and_their_imports() -> None:
    """The check above is only as good as its walk: it must find each layer, and the
    imports it forbids where they are (a lab module does import the product)."""
    layers = {layer_of(module_name(p)) for p in sources()}
    assert layers == set(FORBIDDEN)
    peers = SRC / "wiretun" / "lab" / "peers.py"
    assert "wiretun.lab.netns" in imports_of(peers)
    demo = SRC / "wiretun" / "demo.py"
    assert any(is_within(m, LAB) for m in imports_of(demo))


def test_relative_imports_are_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "wiretun" / "tunnel"
    pkg.mkdir(parents=True)
    mod = pkg / "x.py"
    mod.write_text(
        "from ..lab import peers\nfrom . import up\n\n\ndef f():\n    import wiretun.testing\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert {"wiretun.lab.peers", "wiretun.tunnel.up", "wiretun.testing"} <= imports_of(mod)


@pytest.mark.parametrize("command", ["up", "down"])
def test_the_cli_loads_only_the_command_it_runs(command: str) -> None:
    """cli.py names its commands as strings (imported on demand): `wiretun up` must not
    load the bench, the demo or the lab that they stand on."""
    code = (
        "import sys, wiretun.cli as c\n"
        f"c.build_parser(['-v', {command!r}, 'x'])\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('wiretun'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert f"wiretun.tunnel.{command}" in out
    loaded = [m for m in out if any(is_within(m, f) for f in FORBIDDEN["product"])]
    assert loaded == []
