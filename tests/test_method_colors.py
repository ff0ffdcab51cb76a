"""Each method's colour lives on its declaration (``Method.color``): the views read it from
there, so a new method is coloured by declaring it, and no view module hard-codes a scope."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tl_jacobian_scopes.errors import OptionError
from tl_jacobian_scopes.scopes.api import SCOPES, Scope, register
from tl_jacobian_scopes.scopes.declarations import FISHER, SEMANTIC, TEMPERATURE
from tl_jacobian_scopes.views import SCOPE_COLORS, scope_color, show
from scope_fixtures import make_result

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def violet_method():
    method = dataclasses.replace(SEMANTIC, name="violet", label="Violet", color="#8a2be2")
    register(Scope(method, "violet_scope", "A custom scope with its own colour (test)."))
    yield method
    SCOPES.pop("violet", None)


def test_the_scopes_declare_the_colours_they_always_had() -> None:
    assert (SEMANTIC.color, TEMPERATURE.color, FISHER.color) == ("#1f77b4", "#d62728", "#2ca02c")
    assert dict(SCOPE_COLORS) == {"semantic": "#1f77b4", "temperature": "#d62728", "fisher": "#2ca02c"}


def test_a_method_without_a_colour_is_grey() -> None:
    assert SCOPES["gxi"].method.color is None and "gxi" not in SCOPE_COLORS
    assert scope_color("gxi") == scope_color("never-registered") == "#444444"


def test_a_registered_method_is_coloured_by_its_declaration(violet_method) -> None:
    assert SCOPE_COLORS["violet"] == scope_color("violet") == "#8a2be2"
    page = show(make_result(scope="violet")).to_html()
    assert "border-left:4px solid #8a2be2" in page


def test_no_view_module_hard_codes_a_scope_colour() -> None:
    colours = [m.color for m in (SEMANTIC, TEMPERATURE, FISHER)]
    for path in [*(ROOT / "tl_jacobian_scopes" / "views").glob("*.py"),
                 *(ROOT / "tl_jacobian_scopes" / "timeseries").glob("*.py"),
                 *(ROOT / "tl_jacobian_scopes" / "results").glob("*.py")]:
        text = path.read_text(encoding="utf-8").lower()
        assert not [c for c in colours if c in text], path


@pytest.mark.parametrize("color", ['#123456"><script>alert(1)</script>', "red", "#abc", "#12345g", 123])
def test_a_colour_that_is_not_hex_is_refused_at_declaration(color) -> None:
    """The views write the colour into a style attribute (and the app parses it as #rrggbb):
    a declared colour used to reach the page unescaped."""
    with pytest.raises(OptionError, match="color must be None or '#rrggbb'"):
        dataclasses.replace(SEMANTIC, name="bad_colour", color=color)
    assert "bad_colour" not in SCOPES


def test_a_hex_colour_in_either_case_is_accepted() -> None:
    assert dataclasses.replace(SEMANTIC, name="upper", color="#8A2BE2").color == "#8A2BE2"


@pytest.mark.parametrize("color", ["red", "#abc", "rgb(1,2,3)", None])
def test_the_public_heatmap_refuses_a_colour_its_page_cannot_draw(color) -> None:
    """The page parses the colour as #rrggbb: "red" drew every cell blank, silently."""
    import torch

    from tl_jacobian_scopes.views import heatmap

    with pytest.raises(OptionError, match="'#rrggbb'"):
        heatmap(torch.ones(2, 2), ["a", "b"], ["c", "d"], color, "caption")
    assert "tjsHeatmap" in heatmap(torch.ones(2, 2), ["a", "b"], ["c", "d"], "#8A2BE2", "caption")
