"""Regression tests for the small items a hostile review of issue 11's features left open
(batch slicing, show() parts, explain_generation's early option check, NaN heatmaps, progress
wording, user hooks during scope calls)."""

import pytest

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result


# ---- ScopeBatch slicing ----------------------------------------------------------------------

def test_a_sliced_or_copied_batch_is_still_a_batch():
    items = [make_result(), make_result(position=3), make_result(position=4)]
    batch = tjs.ScopeBatch(items)
    tail = batch[1:]
    assert type(tail) is tjs.ScopeBatch and list(tail) == items[1:]
    assert list(tail.to_dataframe().prompt_index.unique()) == [0, 1]
    assert "Jacobian" in tail.show()._repr_html_()
    assert batch[-1] is items[2] and isinstance(batch[0], tjs.ScopeResult)
    duplicate = batch.copy()
    assert type(duplicate) is tjs.ScopeBatch and duplicate == batch and duplicate is not batch


# ---- show() parts as a list ------------------------------------------------------------------

def test_show_takes_parts_as_names_or_as_a_list():
    r = make_result()
    assert r.show(["tokens"]).parts == r.show("tokens").parts == ["tokens"]
    assert r.show(("tokens",))._repr_html_().count("tjs-cv-") == r.show("tokens")._repr_html_().count("tjs-cv-")
    for bad in (["tokens", "heatmap"], ["raw"], [3]):
        with pytest.raises(tjs.OptionError, match="parts must be names among"):
            r.show(bad)
