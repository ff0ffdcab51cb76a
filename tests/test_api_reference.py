"""docs/api.md documents each name where it lives: the top level lists only ``tjs.__all__`` (not
the moved names, which still resolve through ``dir()`` for one release), and the evaluation
section lists only names that ``tjs.evaluation`` exports (not what its modules import)."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest

import tl_jacobian_scopes as tjs

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
#: ``::: dotted.path`` and the indented option lines under it.
BLOCKS = {m.group(1): m.group(2) for m in re.finditer(r"^::: (\S+)\n((?:    .*\n)*)", API, flags=re.M)}


def _resolve(path: str) -> object:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("path", sorted(BLOCKS))
def test_every_documented_object_exists_without_a_deprecation(path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert _resolve(path) is not None


def test_the_top_level_section_shows_only_the_public_names() -> None:
    # force_inspection reads dir(tjs), which keeps the moved names discoverable: only
    # ``filters: public`` (which reads __all__) keeps them out of the top-level reference.
    assert "filters: public" in BLOCKS["tl_jacobian_scopes"]
    griffe = pytest.importorskip("griffe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = griffe.load("tl_jacobian_scopes", force_inspection=True)
    shown = {name for name, member in module.members.items() if member.is_public and not member.is_module}
    assert shown <= set(tjs.__all__), sorted(shown - set(tjs.__all__))
    assert not shown & set(tjs._MOVED)


def test_the_evaluation_section_lists_names_that_tjs_evaluation_exports() -> None:
    options = BLOCKS["tl_jacobian_scopes.evaluation.aopc"]
    listed = re.search(r"members: \[(.*)\]", options)
    assert listed, "without a members list the module's imports (ModelAccess, errors, ...) are documented too"
    names = [n.strip() for n in listed.group(1).split(",")]
    assert names and set(names) <= set(tjs.evaluation.__all__), names


def test_the_public_view_components_are_in_the_reference() -> None:
    """docs/architecture.md calls them public (a new result type's show() uses them): the reference had no views section."""
    import tl_jacobian_scopes.views as views

    assert "tl_jacobian_scopes.views" in BLOCKS
    assert {"escape", "circuitsvis_element", "heatmap", "script_json", "ScopeView"} <= set(views.__all__)
