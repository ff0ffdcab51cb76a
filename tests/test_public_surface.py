"""A smaller public surface: the top level keeps the calls researchers type; result types,
evaluation and patching live in ``tjs.results``, ``tjs.evaluation`` and ``tjs.patching``. The old
top-level names still resolve, to the same objects, with a DeprecationWarning (for one release)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import tl_jacobian_scopes as tjs

ROOT = Path(__file__).resolve().parents[1]
MOVED = dict(tjs._MOVED)


def test_moved_names_are_the_seven_results_six_evaluation_and_eleven_patching_names() -> None:
    by_module: dict[str, set[str]] = {}
    for name, module in MOVED.items():
        by_module.setdefault(module, set()).add(name)
    assert {m: len(n) for m, n in by_module.items()} == {"results": 7, "evaluation": 6, "patching": 11}
    assert {"ScopeResult", "ScopeBatch", "ScopeMatrix", "GenerationResult"} <= by_module["results"]
    assert {"gradient_x_input", "integrated_gradients", "leave_one_out"} <= by_module["evaluation"]
    assert {"patching_map", "PatchingResult", "patch_top"} <= by_module["patching"]


@pytest.mark.parametrize("name", sorted(MOVED))
def test_an_old_top_level_name_warns_and_is_the_same_object(name) -> None:
    module = importlib.import_module(f"tl_jacobian_scopes.{MOVED[name]}")
    with pytest.warns(DeprecationWarning, match=rf"tl_jacobian_scopes\.{MOVED[name]}\.{name}") as caught:
        old = getattr(tjs, name)
    assert old is getattr(module, name)
    assert name in module.__all__ and name not in tjs.__all__
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_from_import_of_an_old_name_warns_too() -> None:
    with pytest.warns(DeprecationWarning, match="tjs.results.ScopeResult"):
        from tl_jacobian_scopes import ScopeResult
    assert ScopeResult is tjs.results.ScopeResult


def test_from_import_of_an_old_name_warns_once_at_the_importing_line() -> None:
    """importlib's fromlist check used to warn a second time: two warnings for one import line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from tl_jacobian_scopes import PatchingResult, ScopeMatrix  # noqa: F401
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert sorted(str(w.message).split()[0] for w in moved) == [
        "tl_jacobian_scopes.PatchingResult", "tl_jacobian_scopes.ScopeMatrix"]
    assert {w.filename for w in moved} == {__file__}


def test_an_old_name_turned_into_an_error_still_raises_at_import() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning, match="tjs.results.TokenScore"):
            from tl_jacobian_scopes import TokenScore  # noqa: F401


def test_dir_lists_the_package_not_the_imports_its_facade_needs() -> None:
    """The deprecation shim's imports (Any, importlib, warnings) showed in dir(tjs) and autocomplete."""
    assert not {"Any", "importlib", "sys", "warnings"} & set(dir(tjs))
    assert {"fisher_scope", "results", "ScopeResult"} <= set(dir(tjs))


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_scope'"):
        tjs.no_such_scope  # noqa: B018


def test_the_top_level_is_smaller_and_every_name_resolves_without_a_warning() -> None:
    # 66 names before issue 23; the calls researchers type stay.
    assert len(tjs.__all__) == len(set(tjs.__all__)) <= 46
    for name in ("semantic_scope", "fisher_scope", "temperature_scope", "jacobian_scope", "load", "load_model",
                 "load_default_model", "compare", "save_html", "init_notebook", "explain_generation", "ScopeError"):
        assert name in tjs.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in tjs.__all__:
            getattr(tjs, name)
    assert {"results", "evaluation", "patching"} <= set(tjs.__all__)
    assert set(MOVED) <= set(dir(tjs))  # still discoverable


def test_importing_the_package_and_star_import_do_not_warn() -> None:
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning); "
            "import tl_jacobian_scopes as tjs; from tl_jacobian_scopes import *; "
            "print(len(tjs.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]


def test_docs_demos_tests_and_the_package_use_the_new_names() -> None:
    pattern = re.compile(r"(?<![\w.])(tjs|tl_jacobian_scopes)\.(" + "|".join(MOVED) + r")\b")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "demos").glob("*.py"),
             *(ROOT / "demos").glob("*.ipynb"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "tl_jacobian_scopes").rglob("*.py"),
             *(p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name)]
    stale = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert not stale, stale[:20]


def test_star_import_brings_no_moved_name_as_the_api_reference_says() -> None:
    namespace: dict[str, object] = {}
    exec("from tl_jacobian_scopes import *", namespace)  # noqa: S102
    assert "fisher_scope" in namespace and not set(MOVED) & set(namespace)
    assert "`from tl_jacobian_scopes import *` no longer brings them" in " ".join(
        (ROOT / "docs" / "api.md").read_text(encoding="utf-8").split())
