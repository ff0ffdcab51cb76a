"""A proper package: typed, licensed, with a description that renders on an index page
and an sdist that carries its tests' helpers (the sdist and wheel themselves are built and
installed by .ci/wheel_smoke.sh)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_metadata_is_complete() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"  # SPDX string (PEP 639), not the deprecated table
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["authors"] and project["urls"] and project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
    assert (ROOT / "tl_jacobian_scopes" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["tl_jacobian_scopes"]
    requires = PYPROJECT["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires)


def test_long_description_has_no_relative_links() -> None:
    readme = PYPROJECT["project"]["readme"]
    text = (ROOT / readme["file"]).read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    assert all(t.startswith("https://") for t in targets), targets


def test_sdist_manifest_carries_test_helpers_and_docs() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    assert "recursive-include tests *.py" in manifest
    assert "recursive-include docs *.md" in manifest
    for helper in ("conftest.py", "tiny_models.py", "scope_fixtures.py", "virtual_devices.py", "sweep_worker.py"):
        assert (ROOT / "tests" / helper).exists()


def test_docs_extra_matches_the_lock() -> None:
    for leg in ("tl4", "tl3"):
        lock = (ROOT / "constraints" / f"{leg}.txt").read_text(encoding="utf-8")
        for name in ("mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python", "mkdocs-jupyter"):
            assert re.search(rf"^{re.escape(name)}==", lock, re.M), (leg, name)


def test_test_modules_are_named_by_behaviour_and_import_only_helpers() -> None:
    """Shared test helpers live in helper modules (conftest.py, tiny_models.py, browser.py, ...):
    a test module imported by another would be collected twice over and tie unrelated files."""
    import ast

    tests = ROOT / "tests"
    modules = {p.stem for p in tests.glob("test_*.py")}
    assert not {m for m in modules if re.search(r"review|issue\d", m)}, "name test files after what they test"
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in modules], f"{path.name} imports a test module: {names}"
