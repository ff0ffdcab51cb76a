"""A token holding a lone UTF-16 surrogate (a file's ``"\\ud800"`` reads back as one) is not a
character and cannot be encoded as UTF-8: every view must still save and display (the surrogate
shown as U+FFFD), and ``save_json`` must write a file that loads back equal."""

from __future__ import annotations

import json

import pytest
import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.results import ScopeBatch, ScopeMatrix
from tl_jacobian_scopes.results.generation import GenerationResult
from scope_fixtures import make_patching, make_result

TOKENS = ("the", " \ud800x", ' "<script>alert(1)</script>', " \udfff", " on", " mat")


def _views() -> dict[str, object]:
    r = make_result(TOKENS)
    return {
        "ScopeResult": r,
        "ScopeBatch": ScopeBatch([r, make_result(("a", "\udc80"))]),
        "ScopeMatrix": ScopeMatrix([make_result(TOKENS, position=p) for p in (3, 4)]),
        "GenerationResult": GenerationResult(ScopeMatrix([make_result(TOKENS, position=p) for p in (3, 4)]),
                                             prompt_length=4, generated=[4, 5]),
        "PatchingResult": make_patching(torch.arange(6.0).reshape(2, 3) - 2, site="resid_pre", clean=TOKENS[:3]),
    }


@pytest.mark.parametrize("name", sorted(_views()))
def test_a_view_with_a_lone_surrogate_saves_and_displays(name, tmp_path) -> None:
    result = _views()[name]
    shown = result._repr_html_()
    shown.encode("utf-8")  # a notebook sends the HTML as UTF-8
    page = result.save_html(tmp_path / "v.html").read_text(encoding="utf-8")
    assert "\ufffd" in page and "<script>alert(1)" not in page


@pytest.mark.parametrize("part", ["tokens", "layers", "heads"])
def test_every_part_of_a_result_view_saves(part, tmp_path) -> None:
    view = make_result(TOKENS).show(part)
    assert "\ufffd" in view.save(tmp_path / "v.html").read_text(encoding="utf-8")


def test_compare_and_the_page_title_save(tmp_path) -> None:
    r = make_result(TOKENS)
    tjs.compare(r, make_result(TOKENS, scope="fisher")).save(tmp_path / "c.html")
    view = r.show()
    view.title = "title \ud800"
    assert "<title>title \ufffd</title>" in view.to_html()


@pytest.mark.parametrize("name", ["ScopeResult", "ScopeBatch", "ScopeMatrix", "GenerationResult", "PatchingResult"])
def test_save_json_writes_a_lone_surrogate_that_loads_back_equal(name, tmp_path) -> None:
    result = _views()[name]
    path = result.save_json(tmp_path / "r.json")
    text = path.read_text(encoding="utf-8")
    assert "\\ud800" in text or "\\udc80" in text
    json.loads(text)  # standard JSON
    assert tjs.load(path) == result
