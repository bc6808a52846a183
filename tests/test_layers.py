"""No package imports a package above it (docs/design.md, "Layers"). Every import counts: module level,
inside functions and under ``TYPE_CHECKING``, so that a type hint cannot hide a dependency either."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "isnet"

#: bottom to top; a package may import its own layer's packages and the layers below
LAYERS = [
    {"errors", "tracking_names", "files"},  # leaf modules: import nothing of isnet
    {"config"},
    {"data", "tracking"},
    {"models", "lrp"},
    {"measure"},
    {"methods"},
    {"train"},
    {"segment", "evaluate", "bench"},
    {"commands"},
    {"cli", "__main__"},
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0] if rel.parts[0] != "__init__" else "isnet"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return [(line, name) for line, name in out if name.startswith("isnet.")]


def test_every_package_has_a_layer():
    packages = {_package_of(p) for p in PACKAGE.rglob("*.py")} - {"isnet"}
    assert packages <= set(LEVEL), f"packages without a layer in this test: {sorted(packages - set(LEVEL))}"


def test_no_package_imports_a_package_above_it():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _package_of(path)
        if own == "isnet":
            continue
        for line, name in _imports(path):
            target = name.split(".")[1]
            if target == own:
                continue
            if target not in LEVEL:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}: no layer for {target!r}")
            elif LEVEL[target] > LEVEL[own] or (LEVEL[own] == 0 and target != own):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {name} ({target}, a layer up)")
            elif LEVEL[target] == LEVEL[own] and own in ("data", "tracking", "models", "lrp"):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {name}: same-layer packages "
                           f"stay independent")
    assert not bad, "\n".join(bad)


def test_config_imports_no_other_isnet_package_but_the_leaves():
    for path in (PACKAGE / "config").rglob("*.py"):
        for line, name in _imports(path):
            assert name.split(".")[1] in ("config", "errors", "tracking_names"), f"{path.name}:{line} imports {name}"
