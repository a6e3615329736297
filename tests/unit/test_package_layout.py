"""The import arrows point down: each tier stands on the shared ground floor, never on another tier.

Read from the source with ``ast`` (nothing is imported), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src" / "fogline"


def imports_of(package: str) -> dict[str, set[str]]:
    """module file (relative to src/fogline) -> every module name it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")) if package else sorted(SRC.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(SRC))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in imports_of(package).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_the_agent_never_imports_the_cloud_tier_or_torch():
    assert offenders("agent", ("fogline.cloud", "fogline.modelbuild", "fogline.demo", "torch")) == []


def test_the_cloud_tier_never_imports_the_agent():
    assert offenders("cloud", ("fogline.agent", "fogline.demo")) == []


@pytest.mark.parametrize("package", ["fleet", "models", "netproxy", "serving"])
def test_the_shared_floor_imports_no_tier(package):
    if not (SRC / package).is_dir():
        pytest.skip(f"no fogline.{package} package")
    tiers = ("fogline.agent", "fogline.cloud", "fogline.demo", "fogline.modelbuild")
    assert offenders(package, tiers) == []


def test_no_runtime_code_imports_the_benchmarks():
    assert offenders("", ("bench",)) == []


def test_the_top_level_distribution_holds_one_package():
    root = SRC.parent.parent
    for old in ("agent", "cloud", "edge_models"):
        assert not (root / old / "__init__.py").exists(), f"{old}/ is a top-level package again"
    assert not (root / "proto" / "fogline" / "__init__.py").exists(), "the runtime lives under src/fogline"
