"""Regression tests for the small items a hostile review of issue 11's features left open
(batch slicing, show() parts, explain_generation's early option check, NaN heatmaps, progress
wording, user hooks during scope calls)."""

import re

import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result
from test_notebook_views import needs_browser
from test_views import _chromium
from tiny_models import BACKENDS, tiny_model
from tl_jacobian_scopes import progress as P
from tl_jacobian_scopes.models import hook_count
from tl_jacobian_scopes.views import html as views_html


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


# ---- heatmaps with NaN cells -----------------------------------------------------------------

def _grid_with_nan():
    grid = torch.arange(1.0, 13.0).reshape(3, 4)
    grid[1, 2] = float("nan")
    grid[2, 0] = float("inf")
    return grid


def test_heatmap_scale_comes_from_the_finite_cells():
    spec, caption = views_html._heatmap_spec(_grid_with_nan(), "#336699")
    assert spec["top"] == 12.0  # the largest finite cell, not nan (nor inf)
    assert caption.startswith("max 12") and "2 non-finite cells" in caption and "nan" not in caption.split(";")[0]
    big = torch.rand(20, 10)
    big[0, 0] = float("nan")
    spec, caption = views_html._heatmap_spec(big, "#336699")
    finite = big.flatten()[1:]
    assert abs(spec["top"] - float(torch.quantile(finite, 0.99))) < 1e-6 and "1 non-finite cell " in caption
    _, clean = views_html._heatmap_spec(torch.rand(3, 4), "#336699")
    assert "non-finite" not in clean


@needs_browser
def test_heatmap_with_a_nan_cell_still_colours_the_rest_in_a_browser(tmp_path):
    grid = _grid_with_nan()
    cell = views_html._heatmap(grid, ["a", "b", "c"], ["w", "x", "y", "z"], "#336699", "a grid")
    path = views_html.ScopeView([cell], "nan grid").save(tmp_path / "nan.html")
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()).stdout
    cells = [(re.search(r'background: ([^;"]*)', td).group(1), re.search(r'title="([^"]*)"', td).group(1))
             for td in re.findall(r"<td [^>]*>", dom)]
    assert len(cells) == 12, dom[-2000:]
    by_title = {title.split(": ")[0]: (background, title.split(": ")[1]) for background, title in cells}
    assert by_title["b, y"] == ("rgb(176, 176, 176)", "nan") and by_title["c, w"] == ("rgb(176, 176, 176)", "inf")
    alphas = {k: float(re.search(r"rgba\(51, 102, 153, ([0-9.]+)\)", bg).group(1)) if "rgba" in bg else 1.0
              for k, (bg, _) in by_title.items() if k not in ("b, y", "c, w")}
    assert alphas["c, z"] == 1.0 and 0 < alphas["a, w"] < 0.2 < alphas["b, x"] < alphas["c, y"]


# ---- progress: the count and the percentage agree --------------------------------------------

def _count_and_percent(text):
    found = re.search(r": ([0-9.]+)/7 positions \(([0-9]+)%\)", text)
    assert found, text
    return float(found.group(1)), int(found.group(2))


def test_progress_count_and_percentage_agree_while_a_unit_is_partly_done():
    bar = P.Progress("fisher scope", total=7, unit="positions", enabled=False)
    bar.set(0.49)
    assert _count_and_percent(bar.text()) == (0.4, 5)  # was "0/7 positions (7%)"
    for done in [k / 20 for k in range(140)] + [0.99, 6.99, 1 / 3]:
        bar.set(done)
        count, percent = _count_and_percent(bar.text())
        assert count <= done < count + 0.1 + 1e-9
        assert percent <= 100 * count / 7 < percent + 1 and percent < 100  # 100% only when done
    bar.set(7)
    assert _count_and_percent(bar.text()) == (7.0, 100) and "7/7 positions" in bar.text()


def test_terminal_bar_shows_the_partial_count(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(P, "_kernel_display", lambda: None)
    with P.Progress("forced", total=7, unit="positions", enabled=True) as bar:
        bar.set(0.49)
        err = capsys.readouterr().err
        assert "0.4/7 positions" in err and "  6%|" in err, err  # 0.4 of 7 is 5.7%: tqdm rounds


# ---- the user's own hooks shape what a scope explains ----------------------------------------

def _zero_head(head, n_heads):
    def hook(act, hook):
        # hook_z is [batch, pos, head, d_head] on HookedTransformer, [batch, pos, head * d_head] on the bridge.
        act = act.clone()
        act.view(*act.shape[:2], n_heads, -1)[:, :, head] = 0
        return act
    return hook


@pytest.mark.parametrize("backend", BACKENDS)
def test_scopes_explain_the_model_with_the_users_hooks(backend):
    """A user's hooks (an ablation attached with model.add_hook) fire in the scope's forward
    pass, once per call, and the scores are those of the hooked model; the hooks stay attached."""
    model = tiny_model("llama", backend)[0]
    prompt = "the cat sat on the mat and the"
    plain = tjs.semantic_scope(model, prompt, target=" cat")
    fisher_plain = tjs.fisher_scope(model, prompt, rank=2)
    calls = []
    model.add_hook("blocks.0.attn.hook_z", lambda act, hook: calls.append(hook.name))
    model.add_hook("blocks.1.attn.hook_z", _zero_head(0, model.cfg.n_heads))
    try:
        ablated = tjs.semantic_scope(model, prompt, target=" cat")
        fisher_ablated = tjs.fisher_scope(model, prompt, rank=2)
        assert len(calls) == 2  # one forward pass per call (the VJPs are backward passes)
        for before, after in ((plain, ablated), (fisher_plain, fisher_ablated)):
            assert (before.scores - after.scores).abs().max() > 1e-3 * before.scores.abs().max()
        # Independent check: with every attention layer's output zeroed, position t's residual
        # depends on token t alone, so every other token's Semantic score is exactly 0.
        model.reset_hooks()
        for layer in range(model.cfg.n_layers):
            model.add_hook(f"blocks.{layer}.hook_attn_out", lambda act, hook: torch.zeros_like(act))
        attached = hook_count(model)
        local = tjs.semantic_scope(model, prompt, target=" cat")
        assert local.scores[local.position] > 0
        assert float(local.scores[: local.position].abs().max()) == 0.0
        assert float(plain.scores[: plain.position].abs().max()) > 0  # not so without the hooks
        assert hook_count(model) == attached > 0  # still attached
    finally:
        model.reset_hooks()
