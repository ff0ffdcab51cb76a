"""Labelled patching maps (`PatchingResult`) and `patch_top`'s rankings, on tiny random models.

The attribution estimate is checked against an explicit gradient · (clean - corrupted)
computed here with plain autograd through TransformerLens hooks (no package code).
"""

import io
import json
import warnings

import matplotlib
import pytest
import torch

import tl_jacobian_scopes as tjs
from browser import BROWSER_REQUIRED, CHROMIUM, _chromium
from scope_fixtures import make_patching as _patching
from pages import ALLOWED_TAGS, COMMENT, IMG, MARKERS, SCRIPT, SEPARATORS, TOKEN_IMG, _Page
from tiny_models import BACKENDS, tiny_model
from tl_jacobian_scopes import errors as E
from tl_jacobian_scopes.evaluation.patching import logit_difference, spearman
from tl_jacobian_scopes.evaluation.patching_result import ESTIMATED, RESTORED
from tl_jacobian_scopes.views.html import LOADER, circuitsvis_bundle

CLEAN, CORRUPTED = "the cat sat on the mat", "the dog sat on the red"


@pytest.fixture(scope="module", params=BACKENDS)
def tiny(request):
    return tiny_model("llama", request.param)[0]


def _ld(model, text):
    cat, dog = (int(model.to_single_token(w)) for w in ("cat", "dog"))
    return float(logit_difference(model, model.to_tokens(text), cat, dog)[0])


def test_patching_maps_are_labelled(tiny):
    model = tiny
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    clean_tokens, corrupted_tokens = model.to_str_tokens(CLEAN), model.to_str_tokens(CORRUPTED)
    layer = tjs.patching.patching_map(model, CLEAN, CORRUPTED, "cat", "dog", batch_size=5)
    heads = tjs.patching.patching_map(model, CLEAN, CORRUPTED, "cat", "dog", site="head")
    estimate = tjs.patching.attribution_patching_map(model, CLEAN, CORRUPTED, "cat", "dog", site="head")
    assert isinstance(layer, tjs.patching.PatchingResult) and isinstance(estimate, tjs.patching.PatchingResult)
    assert tjs.patching.residual_patching_map(model, CLEAN, CORRUPTED, "cat", "dog").site == "resid_pre"
    assert (layer.site, layer.method, layer.metric) == ("resid_pre", "activation patching", RESTORED)
    assert (heads.site, estimate.site, estimate.method, estimate.metric) == ("head", "head", "attribution patching", ESTIMATED)
    assert layer.shape == (n_layers, len(clean_tokens)) and heads.shape == estimate.shape == (n_layers, n_heads)
    assert layer.values.dtype == heads.values.dtype == torch.float32
    assert layer.row_labels == heads.row_labels == [f"L{i}" for i in range(n_layers)]
    assert layer.col_labels == [f"{i}:{t}" for i, t in enumerate(clean_tokens)]
    assert heads.col_labels == [f"H{h}" for h in range(n_heads)]
    assert layer.clean_str_tokens == clean_tokens and layer.corrupted_str_tokens == corrupted_tokens
    assert (layer.answer_str, layer.wrong_str) == ("cat", "dog")
    assert layer.ld_clean == pytest.approx(_ld(model, CLEAN), abs=1e-5)
    assert layer.ld_corrupted == pytest.approx(_ld(model, CORRUPTED), abs=1e-5)
    assert layer.model_name == model.cfg.model_name
    # tensor access: indexing, numpy, spearman
    assert torch.equal(layer[0], layer.values[0]) and float(layer[1, 2]) == float(layer.values[1, 2])
    assert (torch.from_numpy(__import__("numpy").asarray(heads)) == heads.values).all()
    assert spearman(heads, estimate) == spearman(heads.values, estimate.values)
    assert "PatchingResult(" in repr(heads) and "L" in repr(heads) and "'cat' vs 'dog'" in repr(heads)


def _hand_made(values, site="head", tokens=None, **kwargs):
    n_rows, n_cols = values.shape
    tokens = tokens or [f"t{i}" for i in range(n_cols)]
    cols = [f"H{h}" for h in range(n_cols)] if site == "head" else [f"{i}:{t}" for i, t in enumerate(tokens)]
    fields = dict(metric=RESTORED, method="activation patching", site=site, row_labels=[f"L{i}" for i in range(n_rows)],
                  col_labels=cols, clean_str_tokens=list(tokens), corrupted_str_tokens=list(tokens),
                  answer_str="cat", wrong_str="dog", ld_clean=2.0, ld_corrupted=-1.0, model_name="m")
    fields.update(kwargs)
    return tjs.patching.PatchingResult(values=values, **fields)


def test_top_orders_by_value_and_breaks_ties_in_row_major_order():
    r = _hand_made(torch.tensor([[0.0, 0.5, 0.5], [0.5, -1.0, 0.0]]))
    assert [(c.layer, c.head, c.label, c.value) for c in r.top(4)] == [
        (0, 1, "L0H1", 0.5), (0, 2, "L0H2", 0.5), (1, 0, "L1H0", 0.5), (0, 0, "L0H0", 0.0)]
    assert r.top(1, absolute=True)[0] == tjs.patching.PatchingCell(1, 1, None, "L1H1", -1.0)
    assert len(r.top(99)) == 6
    resid = _hand_made(torch.tensor([[0.0, 0.2], [0.1, 0.3]]), site="resid_pre", tokens=["a", " b"])
    assert resid.top(1)[0] == tjs.patching.PatchingCell(1, None, 1, "L1 1: b", pytest.approx(0.3))
    for k in (0, -1, 1.5, True):
        with pytest.raises(E.OptionError, match="positive integer"):
            r.top(k)
    with pytest.raises(E.OptionError, match="labels"):
        _hand_made(torch.zeros(2, 3), row_labels=["L0"])
    with pytest.raises(E.OptionError, match="site"):
        _hand_made(torch.zeros(2, 3), site="mlp")


def test_to_dataframe_round_trips_to_the_tensor(tiny):
    model = tiny
    for result in (tjs.patching.patching_map(model, CLEAN, CORRUPTED, "cat", "dog"),
                   tjs.patching.attribution_patching_map(model, CLEAN, CORRUPTED, "cat", "dog", site="head")):
        df = result.to_dataframe()
        column = "head" if result.site == "head" else "position"
        assert len(df) == result.values.numel()
        assert df["layer"].dtype.kind == "i" and df[column].dtype.kind == "i"
        grid = df.pivot(index="layer", columns=column, values="value").to_numpy()
        assert torch.equal(torch.tensor(grid, dtype=torch.float32), result.values)
        assert list(df["label"][:2]) == [result.label(0, 0), result.label(0, 1)]
        if column == "position":
            assert list(df[df.layer == 0]["token"]) == result.clean_str_tokens
            assert list(df[df.layer == 0]["corrupted_token"]) == result.corrupted_str_tokens


def test_save_and_load_round_trip(tiny, tmp_path):
    result = tjs.patching.patching_map(tiny, CLEAN, CORRUPTED, "cat", "dog", site="head")
    path = result.save_json(tmp_path / "heads.json")
    back = tjs.patching.PatchingResult.load_json(path)
    assert torch.equal(back.values, result.values)
    for name in ("metric", "method", "site", "row_labels", "col_labels", "clean_str_tokens", "corrupted_str_tokens",
                 "answer_str", "wrong_str", "ld_clean", "ld_corrupted", "model_name"):
        assert getattr(back, name) == getattr(result, name), name
    # tjs.load reads the header and returns the right type; files of the first, headerless
    # format (kind "patching") still load.
    loaded = tjs.load(path)
    assert isinstance(loaded, tjs.patching.PatchingResult) and torch.equal(loaded.values, result.values)
    old = {k: v for k, v in result.to_dict().items() if k not in ("format", "version")}
    old["kind"] = "patching"
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert torch.equal(tjs.load(tmp_path / "old.json").values, result.values)
    # Strict JSON: NaN is written as null and read back as NaN.
    nan = _hand_made(torch.tensor([[float("nan"), 1.0]]))
    text = nan.save_json(tmp_path / "nan.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert torch.isnan(tjs.patching.PatchingResult.load_json(tmp_path / "nan.json").values[0, 0])
    bad = result.to_dict()
    bad["values"] = bad["values"][:-1]  # a row short of the labels
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(E.DataFileError, match="labels"):
        tjs.patching.PatchingResult.load_json(tmp_path / "bad.json")
    del bad["site"]
    with pytest.raises(E.DataFileError, match="site"):
        tjs.patching.PatchingResult.from_dict(bad)


HOSTILE = ["the", SCRIPT, IMG, TOKEN_IMG, COMMENT, SEPARATORS, "&amp;", "$^_$"]


def _hostile():
    values = torch.linspace(-1, 1, 2 * len(HOSTILE)).reshape(2, len(HOSTILE))
    return _hand_made(values, site="resid_pre", tokens=HOSTILE, answer_str=SCRIPT, wrong_str=IMG,
                      model_name=COMMENT + IMG, metric=SCRIPT)


def test_hostile_strings_stay_text_in_the_view(tmp_path):
    result = _hostile()
    # The first display of a kernel and saved pages carry the bundle; later displays only a loader.
    for page in (result.show().to_html(), result._repr_html_(), result.save_html(tmp_path / "p.html").read_text()):
        assert page.count(circuitsvis_bundle()) <= 1
        rest = page.replace(circuitsvis_bundle(), "")
        parser = _Page()
        parser.feed(rest)
        parser.close()
        assert set(parser.tags) <= ALLOWED_TAGS, set(parser.tags) - ALLOWED_TAGS
        assert not [a for a in parser.attrs if a.startswith("on")] and not parser.comments
        assert "<img" not in rest.lower()
        # Heatmap labels travel as data inside scripts: no script can hold a character that ends it.
        data_scripts = [s for s in parser.scripts if s and "<script>" + s + "</script>" != LOADER.strip()]
        assert data_scripts and all(not set("<>&\u2028\u2029") & set(script) for script in data_scripts)
        text = "".join(parser.text)
        assert SCRIPT in text and IMG in text and COMMENT + IMG in text  # header: shown as text
        data = "".join(parser.scripts)
        assert json.dumps(SCRIPT).replace("<", "\\u003c").replace(">", "\\u003e")[1:-1] in data
    assert result.show().to_html().count("tjs-heatmap") >= 2  # restores and harms parts


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason="needs Chromium (apt-get install chromium)")
def test_hostile_patching_view_runs_no_injected_code_in_a_real_browser(tmp_path):
    assert CHROMIUM, "Chromium is required here (TJS_BROWSER_REQUIRED=1)"
    path = _hostile().save_html(tmp_path / "hostile.html")
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()).stdout
    assert "tjs-heatmap" in dom
    assert not any(marker in dom for marker in MARKERS), [m for m in MARKERS if m in dom]


def test_plot_draws_tokens_literally_without_pyplot():
    backend = matplotlib.get_backend()
    fig = _hostile().plot()
    fig.savefig(io.BytesIO(), format="png")  # "$^_$" would raise if parsed as mathtext
    assert matplotlib.get_backend() == backend
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "7:$^_$" in labels


def _explicit_gradient_times_delta(model, site):
    """sum(d LD / d a · (a_clean - a_corrupted)) / gap per cell, with plain autograd and hooks."""
    cat, dog = (int(model.to_single_token(w)) for w in ("cat", "dog"))
    names = [f"blocks.{L}.hook_resid_pre" if site == "layer" else f"blocks.{L}.attn.hook_z"
             for L in range(model.cfg.n_layers)]
    _, clean_cache = model.run_with_cache(model.to_tokens(CLEAN))
    kept = {}

    def keep(name):
        def hook(act, hook):  # d LD / d act = d LD / d zero, for a zero added to act
            zero = torch.zeros_like(act, requires_grad=True)
            kept[name] = (zero, act.detach().clone())
            return act + zero
        return hook

    with torch.enable_grad():
        logits = model.run_with_hooks(model.to_tokens(CORRUPTED), fwd_hooks=[(n, keep(n)) for n in names])
        ld = logits[0, -1, cat] - logits[0, -1, dog]
        grads = torch.autograd.grad(ld, [kept[n][0] for n in names])
    gap = _ld(model, CLEAN) - _ld(model, CORRUPTED)
    rows = []
    for name, grad in zip(names, grads):
        change = grad[0] * (clean_cache[name][0] - kept[name][1][0])
        rows.append(change.sum(-1) if site == "layer" else change.sum(dim=(0, 2)))
    return torch.stack(rows).float() / gap


def test_attribution_estimate_is_gradient_times_delta(tiny):
    for site in ("layer", "head"):
        ours = tjs.patching.attribution_patching_map(tiny, CLEAN, CORRUPTED, "cat", "dog", site=site)
        explicit = _explicit_gradient_times_delta(tiny, site)
        torch.testing.assert_close(ours.values, explicit, rtol=1e-4, atol=1e-5)
        assert explicit.abs().max() > 1e-3  # not trivially zero


def test_patch_top_ranks_by_attribution_by_default(tiny):
    model = tiny
    r = tjs.semantic_scope(model, CLEAN, target="cat", contrast="dog", internals=True)
    explicit = _explicit_gradient_times_delta(model, "head")
    expected = [divmod(int(i), explicit.shape[1]) for i in torch.argsort(explicit.flatten(), descending=True)[:3]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default ranking does not warn
        outcome = tjs.patching.patch_top(model, CLEAN, CORRUPTED, r, k=3, site="head")
        by_answer = tjs.patching.patch_top(model, CLEAN, CORRUPTED, k=3, site="head", answer="cat", wrong="dog")
    assert outcome.patched == by_answer.patched == expected
    assert outcome.labels == [f"L{layer}H{head}" for layer, head in expected] and outcome.site == "head"
    assert outcome.ranked_by == "attribution patching" and outcome.labels[0] in repr(outcome)
    assert f"recovered={outcome.recovered:.3f}" in repr(outcome)
    # Positions: the estimate of patching hook_embed ranks the one differing token ('cat' vs 'dog') first.
    first = tjs.patching.patch_top(model, CLEAN, "the dog sat on the mat", r, k=1)
    assert first.patched == [2] and first.labels == ["2:cat"] and first.recovered == pytest.approx(1.0, abs=1e-5)
    with pytest.warns(tjs.patching.RawSensitivityWarning, match="attribution"):
        raw = tjs.patching.patch_top(model, CLEAN, CORRUPTED, r, k=3, site="head", rank_by="scope")
    assert raw.ranked_by == "scope"
    with pytest.raises(E.OptionError, match="rank_by"):
        tjs.patching.patch_top(model, CLEAN, CORRUPTED, r, k=3, rank_by="sensitivity")
    with pytest.raises(E.OptionError, match="result="):
        tjs.patching.patch_top(model, CLEAN, CORRUPTED, k=3, answer="cat", wrong="dog", rank_by="scope")
    with pytest.raises(E.OptionError, match="rank_by"):
        tjs.patching.patch_top(model, CLEAN, CORRUPTED, torch.ones(model.cfg.n_layers, model.cfg.n_heads), k=1,
                      answer="cat", wrong="dog", rank_by="scope")
    with pytest.raises(E.TargetError, match="answer= and wrong="):
        tjs.patching.patch_top(model, CLEAN, CORRUPTED, k=3)


def test_patch_top_ranks_a_patching_result_by_its_own_cells(tiny):
    model = tiny
    for site in ("layer", "head"):
        real = tjs.patching.patching_map(model, CLEAN, CORRUPTED, "cat", "dog", site=site)
        outcome = tjs.patching.patch_top(model, CLEAN, CORRUPTED, real, k=1)  # answer and wrong come from the result
        best = real.top(1)[0]
        assert outcome.labels == [best.label] and outcome.site == real.site
        assert outcome.patched == [(best.layer, best.head if site == "head" else best.position)]
        # patching the single best cell restores what the map says it does
        assert outcome.recovered == pytest.approx(best.value, abs=1e-4)


# ---- NaN cells, and files whose token lists do not fit the map -----------------------------------


def test_patching_top_ranks_nan_cells_last():
    values = torch.tensor([[float("nan"), 0.2], [0.9, -0.5]])
    result = _patching(values)
    assert [c.label for c in result.top(3)] == ["L1H0", "L0H1", "L1H1"]
    assert [c.label for c in result.top(3, absolute=True)] == ["L1H0", "L1H1", "L0H1"]
    assert result.top(4)[-1].label == "L0H0" and str(result.top(4)[-1].value) == "nan"


def test_patching_files_with_token_lists_that_do_not_fit_the_map_are_refused(tmp_path):
    import json

    good = _patching(torch.rand(2, 3), site="resid_pre")
    path = good.save_json(tmp_path / "p.json")
    assert len(tjs.load(path).to_dataframe()) == 6
    for change in ({"clean_str_tokens": ["a"]}, {"corrupted_str_tokens": ["a", " b"]},
                   {"values": [[], []], "col_labels": []}):
        data = json.loads(path.read_text())
        data.update(change)
        (tmp_path / "t.json").write_text(json.dumps(data))
        with pytest.raises(tjs.DataFileError):
            tjs.load(tmp_path / "t.json")  # it loaded, then to_dataframe()/plot() raised IndexError/ValueError
