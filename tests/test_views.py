"""Views: self-contained HTML rendered by a real browser offline, notebook display, static figures."""

import re
import socket

import pytest
import torch

import tl_jacobian_scopes as tjs
from browser import BROWSER_REQUIRED, CHROMIUM, _chromium, _RenderedText, needs_browser
from tiny_models import tiny_model
from tl_jacobian_scopes.views import html as views_html

PROMPT = "the cat sat on the mat and the dog ran to the"


@pytest.fixture(scope="module")
def results():
    model, _ = tiny_model("llama", "bridge")
    return (
        tjs.fisher_scope(model, PROMPT, internals=True),
        tjs.semantic_scope(model, PROMPT, target="dog", contrast="cat"),
        tjs.temperature_scope(model, PROMPT),
    )


def test_html_is_self_contained(results, tmp_path):
    fisher, semantic, temperature = results
    path = tjs.save_html([fisher, semantic, temperature], tmp_path / "cmp.html")
    text = path.read_text()
    assert "unpkg.com" not in text and not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"""(src|href)=["']https?://""", text)
    assert text.count("var CircuitsVis") == 1  # the bundle is inlined once per page
    assert "each column is divided by its own maximum" in text  # scales are stated
    single = fisher.save_html(tmp_path / "one.html").read_text()
    assert "Layer × position" in single and "Layer × head" in single and "scaled: sensitivity" in single


def test_notebook_display_never_touches_the_network(results, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a view tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fisher, semantic, _ = results
    html = fisher._repr_html_()
    assert "CircuitsVis.render" in html and "ColoredTokens" in html
    assert "ColoredTokensMulti" in tjs.compare(fisher, semantic)._repr_html_()


def test_compare_refuses_different_tokens(results):
    model, _ = tiny_model("gpt2", "bridge")
    other = tjs.fisher_scope(model, "the dog ran")
    with pytest.raises(tjs.ScopeError, match="same tokens"):
        tjs.compare(results[0], other)


def test_static_figure(results, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    fisher, semantic, _ = results
    for r, name in ((fisher, "f.png"), (semantic, "s.png")):
        path = r.save_png(tmp_path / name)
        image = Image.open(path).convert("L")
        assert image.size[0] > 300 and len(set(image.getdata())) > 20  # not blank


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason="needs Chromium (apt-get install chromium)")
def test_views_render_in_a_real_browser_offline(results, tmp_path):
    assert CHROMIUM, "Chromium is required here (TJS_BROWSER_REQUIRED=1)"
    from PIL import Image

    fisher, semantic, temperature = results
    path = tjs.save_html([fisher, semantic, temperature], tmp_path / "view.html")
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = _chromium(profile, "--dump-dom", path.as_uri()).stdout
    parser = _RenderedText()
    parser.feed(dom)
    # Every CircuitsVis mount was filled by React, and holds the prompt's tokens.
    expected_mounts = len(re.findall(r'class="tjs-cv"', path.read_text()))
    assert len(parser.texts) == expected_mounts >= 5
    for text in parser.texts:
        flat = text.replace("\xa0", " ")
        assert "cat" in flat and "mat" in flat and "dog" in flat, flat[:200]
    assert "Layer:" in "".join(parser.texts) and "Head:" in "".join(parser.texts)

    shot = tmp_path / "shot.png"
    _chromium(profile, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri())
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # rendered content, not a blank page
    non_white = sum(count for count, rgb in colours if sum(rgb) < 720)
    assert non_white > 0.01 * image.size[0] * image.size[1]


# ---- heatmaps with NaN cells ---------------------------------------------------------------------


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
