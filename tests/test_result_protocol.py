"""One result protocol: every result type gets ``show`` / ``_repr_html_`` / ``save_html`` and
(where it has rows) ``len`` / ``[i]`` / iteration from one base in ``results/base.py``, and views
are built from public components rather than private helpers borrowed across packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.evaluation.patching_result import PatchingResult
from tl_jacobian_scopes.results import ScopeBatch, ScopeMatrix, ScopeResult
from tl_jacobian_scopes.results.base import ResultRows, ViewableResult
from tl_jacobian_scopes.results.generation import GenerationResult
from tl_jacobian_scopes.timeseries import ForecastMatrix, ForecastResult, serialize
from tl_jacobian_scopes.views import ScopeView
from scope_fixtures import make_patching, make_result

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tl_jacobian_scopes"

RESULT_TYPES = [ScopeResult, ScopeBatch, ScopeMatrix, GenerationResult, PatchingResult, ForecastResult, ForecastMatrix]
ROW_TYPES = [ScopeMatrix, GenerationResult, ForecastMatrix]
# Each may refine one part of the trio, for a reason: a single result's page takes a normalization;
# an empty batch has no view (None lets a notebook print its text instead of a traceback).
REFINED = {(ScopeResult, "save_html"), (ScopeBatch, "_repr_html_")}


def _forecast(step: int) -> ForecastResult:
    series = serialize(np.arange(10.0) % 4)
    values = series.values[:step]
    scores = np.linspace(0.1, 1.0, step)
    return ForecastResult(series=series, step=step, scope="fisher", result=make_result(scope="fisher"), values=values,
                          value_scores=scores, lags=step - np.arange(step), sep_scores=scores / 10, bos_score=0.0)


def _generation() -> GenerationResult:
    tokens = ["the", " cat", " sat", " on"]
    rows = [make_result(tokens, position=p) for p in (1, 2)]
    return GenerationResult(ScopeMatrix(rows), prompt_length=2, generated=[2, 3])


def _examples() -> dict[type, object]:
    r = make_result()
    return {
        ScopeResult: r,
        ScopeBatch: ScopeBatch([r, make_result(("a", " b", " c"))]),
        ScopeMatrix: ScopeMatrix([make_result(position=p) for p in (3, 4, 5)]),
        GenerationResult: _generation(),
        PatchingResult: make_patching(torch.arange(6.0).reshape(2, 3) - 2),
        ForecastResult: _forecast(6),
        ForecastMatrix: ForecastMatrix([_forecast(5), _forecast(6), _forecast(7)]),
    }


@pytest.mark.parametrize("cls", RESULT_TYPES, ids=lambda c: c.__name__)
def test_every_result_type_gets_the_view_trio_from_the_base(cls) -> None:
    assert issubclass(cls, ViewableResult)
    for name in ("_repr_html_", "save_html"):
        if (cls, name) not in REFINED:
            assert name not in vars(cls), f"{cls.__name__} writes {name} by hand: the base provides it"
    assert "show" in vars(cls), f"{cls.__name__} must say how it looks"


@pytest.mark.parametrize("cls", ROW_TYPES, ids=lambda c: c.__name__)
def test_row_types_get_len_index_and_iteration_from_the_base(cls) -> None:
    assert issubclass(cls, ResultRows)
    assert not {"__len__", "__getitem__", "__iter__"} & set(vars(cls)), cls.__name__


@pytest.mark.parametrize("cls", RESULT_TYPES, ids=lambda c: c.__name__)
def test_every_result_shows_displays_and_saves_the_same_page(cls, tmp_path) -> None:
    result = _examples()[cls]
    view = result.show()
    assert isinstance(view, ScopeView) and view.sections
    shown = result._repr_html_()
    assert isinstance(shown, str) and 'class="tjs-view"' in shown
    path = result.save_html(tmp_path / f"{cls.__name__}.html")
    saved = path.read_text(encoding="utf-8")
    assert saved.startswith("<!DOCTYPE html>") and saved.count("CircuitsVis") >= 1
    # The same page as show() (element ids are fresh per display; everything else is equal).
    ids = lambda text: re.sub(r"tjs-cv-[0-9a-f]{12}", "ID", text)  # noqa: E731
    assert ids(saved) == ids(view.to_html())


@pytest.mark.parametrize("cls", ROW_TYPES, ids=lambda c: c.__name__)
def test_rows_are_the_results_they_hold(cls) -> None:
    result = _examples()[cls]
    rows = list(result)
    assert len(result) == len(rows) >= 2
    assert all(result[i] is row for i, row in enumerate(rows))
    assert result[-1] is rows[-1]
    with pytest.raises(IndexError):
        result[len(rows)]


def test_an_empty_batch_has_no_html_but_a_text_repr() -> None:
    assert ScopeBatch([])._repr_html_() is None
    assert "ScopeBatch" in repr(ScopeBatch([]))


def test_a_result_without_show_says_so() -> None:
    class Bare(ViewableResult):
        pass

    with pytest.raises(NotImplementedError, match="Bare must define show"):
        Bare().save_html("never.html")


def test_views_export_public_components_and_no_package_borrows_private_ones() -> None:
    """Result types, time series, patching and the app build views from the public kit."""
    import tl_jacobian_scopes.views as views

    for name in ("escape", "circuitsvis_element", "heatmap", "script_json", "figure", "SCOPE_COLORS", "ScopeView"):
        assert name in views.__all__ and hasattr(views, name)
    assert views.escape("<b>&") == "&lt;b&gt;&amp;"
    borrowed = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "views":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and "views" in (node.module or "").split("."):
                borrowed += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not borrowed, borrowed


def test_views_html_is_split_by_job() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (PACKAGE / "views").glob("*.py")}
    assert {"components.py", "page.py", "colors.py", "html.py"} <= set(sizes)
    assert sizes["html.py"] < 500, sizes


def test_an_empty_forecast_matrix_has_no_html_and_says_why_it_has_no_view(tmp_path) -> None:
    """An empty ForecastMatrix (its default) used to raise IndexError from show(), save_html() and a notebook's display."""
    empty = ForecastMatrix()
    assert len(empty) == 0 and list(empty) == []
    assert empty._repr_html_() is None and "ForecastMatrix" in repr(empty)
    with pytest.raises(tjs.ScopeError, match="no steps"):
        empty.save_html(tmp_path / "empty.html")
