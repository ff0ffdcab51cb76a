"""Regression tests for the small items a hostile review of issue 11's features left open
(batch slicing, show() parts, explain_generation's early option check, NaN heatmaps, progress
wording, user hooks during scope calls)."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result
from tiny_models import tiny_model


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


# ---- explain_generation checks the scope call before generating -------------------------------

def test_explain_generation_refuses_a_misspelt_option_before_generating(monkeypatch):
    model = tiny_model("llama", "bridge")[0]

    def generate(*args, **kwargs):
        raise AssertionError("generate() ran before the scope's options were checked")

    monkeypatch.setattr(model, "generate", generate)
    for scope, options, message in (
        ("fisher", {"rnak": 2}, "no option 'rnak'.*Did you mean 'rank'"),  # the scope's own message
        ("fisher", {"rank": 0}, "rank must be an int"),
        ("semantic", {"internals": "yes"}, "internals must be True or False"),
        ("semantic", {"batch_size": 0}, "batch_size must be an int"),
    ):
        with pytest.raises(tjs.OptionError, match=message):
            tjs.explain_generation(model, "the cat sat", 3, scope=scope, **options)
    with pytest.raises(tjs.TargetError, match="takes no target or contrast"):
        tjs.explain_generation(model, "the cat sat", 3, scope="fisher", contrast=" dog")
    # The direct call gives the same error for the same typo.
    with pytest.raises(tjs.OptionError, match="no option 'rnak'.*Did you mean 'rank'"):
        tjs.fisher_scope(model, "the cat sat", rnak=2)
