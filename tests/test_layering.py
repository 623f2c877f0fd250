"""The package's dependency rule (docs/design.md "Layout"), checked on the source: every ``omnifuse.*`` import, at any
depth (function-local and type-checking imports included), must point the allowed way.

    app -> tasks, finetune, schema, fusion, moe_core, encoders, data
    tasks -> finetune, schema, fusion, moe_core, encoders, data
    finetune -> fusion, moe_core, encoders
    fusion -> encoders (the token types and the shared attention layer only)
    moe_core, encoders, data, schema -> none of the others
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("data", "encoders", "fusion", "moe_core", "schema", "finetune", "tasks", "app")
ALLOWED = {
    "data": set(),
    "encoders": set(),
    "moe_core": set(),
    "schema": set(),
    "fusion": {"encoders"},
    "finetune": {"encoders", "fusion", "moe_core"},
    "tasks": {"data", "encoders", "fusion", "moe_core", "schema", "finetune"},
    "app": {"data", "encoders", "fusion", "moe_core", "schema", "finetune", "tasks"},
}
# fusion may use only these modules of encoders (types and the one attention layer they share).
FUSION_FROM_ENCODERS = {"omnifuse.encoders.base", "omnifuse.encoders.layers"}


def _omnifuse_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("omnifuse.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("omnifuse.") and not node.level:
            found.append(node.module)
    return found


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_imports_point_one_way(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _omnifuse_imports(path):
            target = module.split(".")[1]
            if target == package or target not in SUBPACKAGES:
                continue
            if target not in ALLOWED[package]:
                violations.append(f"{path.relative_to(ROOT)} imports {module}")
            elif package == "fusion" and module not in FUSION_FROM_ENCODERS:
                violations.append(f"{path.relative_to(ROOT)} imports {module} (fusion may use only {FUSION_FROM_ENCODERS})")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_imports() -> None:
    # Guards the test itself: fusion does import encoders, so an empty result would mean the parser finds nothing.
    seen = {m for p in (ROOT / "fusion").rglob("*.py") for m in _omnifuse_imports(p)}
    assert "omnifuse.encoders.layers" in seen and "omnifuse.encoders.base" in seen


def test_every_subpackage_is_checked() -> None:
    # A new top-level package must get a row in ALLOWED, or its imports would go unchecked.
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "configs", "benchmarks"}
    assert on_disk == set(SUBPACKAGES), on_disk ^ set(SUBPACKAGES)


def test_no_folder_holds_most_of_the_package() -> None:
    # One concern per folder: no sub-package may grow back into the catch-all tasks/ once was (54 % of the lines).
    lines = {p: sum(len(f.read_text(encoding="utf-8").splitlines()) for f in (ROOT / p).rglob("*.py")) for p in SUBPACKAGES}
    total = sum(lines.values())
    assert max(lines.values()) / total <= 0.40, {p: f"{100 * n / total:.0f}%" for p, n in lines.items()}
