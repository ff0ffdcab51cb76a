"""Views in notebooks (issue 11): CircuitsVis once per kernel session, compact data, conventions.

The browser tests build pages the way a saved notebook shows its outputs: in order, the first
view's output carrying the bundle, later ones not; and they measure what the reader sees.
"""

import html
import json
import math
import re
import sys

import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result, result_dict
from browser import CHROMIUM, _chromium, _RenderedText, needs_browser
from tl_jacobian_scopes.views import html as views_html

BUNDLE_MARK = "var CircuitsVis"  # once per bundle copy


def random_result(n_tokens, position, seed=0, **fields):
    """Scores with as many digits as real ones (random), zero after ``position`` like a scope's."""
    g = torch.Generator().manual_seed(seed * 1000 + position)
    scores = torch.rand(n_tokens, generator=g) * (torch.arange(n_tokens) <= position)
    tokens = [f" word{i}" for i in range(n_tokens)]
    return make_result(tokens, position=position, scores=scores.tolist(), **fields)


@pytest.fixture
def fresh_kernel(monkeypatch):
    """As if this Python process had displayed no view yet."""
    monkeypatch.setitem(views_html._notebook, "bundle_sent", False)


def test_only_the_first_display_carries_the_bundle_and_later_ones_are_small(fresh_kernel):
    token_view = random_result(100, 99)
    matrix = tjs.results.ScopeMatrix([random_result(100, p) for p in range(100)])
    first = token_view._repr_html_()
    assert first.count(BUNDLE_MARK) == 1 and len(first) > 1_000_000
    second, matrix_html = token_view.show()._repr_html_(), matrix._repr_html_()
    for page in (second, matrix_html):
        assert BUNDLE_MARK not in page and "tjsCV(" in page
    assert len(second.encode()) <= 50_000, len(second)  # issue 11: a view adds <= 50 KB at 100 tokens
    assert len(matrix_html.encode()) <= 50_000, len(matrix_html)


def test_saved_files_hold_exactly_one_bundle(fresh_kernel, tmp_path):
    a, b = random_result(12, 8), random_result(12, 8, seed=1, scope="fisher")
    matrix = tjs.results.ScopeMatrix([random_result(12, p) for p in (3, 8)])
    a._repr_html_()  # a notebook display first: saved files must not depend on it
    pages = [a.show().to_html(), tjs.compare(a, b).to_html()]
    for path in (a.save_html(tmp_path / "1.html"), tjs.save_html(a, b, path=tmp_path / "2.html"),
                 tjs.save_html([a, b], tmp_path / "3.html"), tjs.save_html(a, tmp_path / "4.html"),
                 tjs.save_html(matrix, path=tmp_path / "5.html"), matrix.save_html(tmp_path / "6.html"),
                 a.show("tokens").save(tmp_path / "7.html")):
        pages.append(path.read_text(encoding="utf-8"))
    for page in pages:
        assert page.count(BUNDLE_MARK) == 1


def test_init_notebook_sends_the_bundle_and_later_views_reuse_it(fresh_kernel, monkeypatch):
    pytest.importorskip("IPython")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append(obj))
    tjs.init_notebook()
    assert len(shown) == 1 and shown[0]["text/html"].count(BUNDLE_MARK) == 1
    assert BUNDLE_MARK not in make_result()._repr_html_()
    tjs.init_notebook()  # forced again, e.g. after the first output was cleared
    assert len(shown) == 2 and shown[1]["text/html"].count(BUNDLE_MARK) == 1
    # Colab shows each output in its own frame: every display must carry the bundle there.
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    assert make_result()._repr_html_().count(BUNDLE_MARK) == 1


def _decode(packed):
    """Independent reading of the packed format: [step, shape, data], runs of zeros as [k]."""
    step, shape, data = packed["$tjs"]
    flat = []
    for item in data:
        flat += [0.0] * item[0] if isinstance(item, list) else [item * step]
    return torch.tensor(flat, dtype=torch.float64).reshape(shape)


def test_packed_view_data_keeps_values_to_a_ten_thousandth_of_the_max():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(7, 13, generator=g) * 10 ** torch.randint(-6, 2, (7, 13), generator=g)
    values[:, 9:] = 0  # zero runs, as after an explained position
    values[2, 3] = 0
    packed = json.loads(views_html.script_json(values))
    decoded = _decode(packed)
    assert decoded.shape == values.shape
    assert torch.all((decoded - values.double()).abs() <= values.max() / 9999 / 2 * 1.001)
    assert torch.all(decoded[values == 0] == 0)
    assert len(packed["$tjs"][2]) <= values.numel() - 7 * 3  # each row's 4 trailing zeros take one entry
    nan = json.loads(views_html.script_json(torch.tensor([1.0, float("nan"), 0.5])).replace("NaN", "null"))
    assert nan["$tjs"][2] == [9999, None, 5000]
    assert views_html.script_json(0.123456789) == "0.1235"  # plain floats: 4 significant digits


def test_show_parts_and_the_view_summary():
    r = make_result(scope="fisher")
    heads = r.show("heads")
    assert heads.parts == ["heads"] and "Layer × head" in heads.to_html() and "Layer × position" not in heads.to_html()
    assert "Tokens coloured by" not in "".join(heads.sections)
    both = r.show("tokens", "layers", normalization="raw")
    assert "Tokens coloured by" in "".join(both.sections) and "raw sensitivity" in "".join(both.sections)
    assert "Layer × head" not in "".join(both.sections)
    text = repr(r.show())
    assert "fisher scope" in text and "tokens, layers, heads" in text and ".save(" in text and " at 0x" not in text
    assert str(r.show()) == text
    with pytest.raises(tjs.OptionError, match="'hedas'"):
        r.show("hedas")
    with pytest.raises(tjs.OptionError, match="normalization='raw'"):
        r.show("raw")
    no_internals = make_result(layer_scores=None, attn_scores=None, mlp_scores=None, head_scores=None,
                               internal_norms={})
    assert no_internals.show().parts == ["tokens"]
    with pytest.raises(tjs.ScopeError, match="internals=True"):
        no_internals.show("heads")


def test_save_html_takes_results_like_compare(tmp_path):
    a, b = make_result(), make_result(scope="fisher")
    text = tjs.save_html(a, b, path=tmp_path / "x.html", labels=["A", "B"]).read_text(encoding="utf-8")
    assert "each column is divided by its own maximum" in text and '"labels": ["A", "B"]' in text
    assert "Comparison" not in tjs.save_html(a, path=tmp_path / "one.html").read_text(encoding="utf-8")
    with pytest.raises(tjs.OptionError, match="needs a path"):
        tjs.save_html(a, b)
    with pytest.raises(tjs.OptionError, match="two paths"):
        tjs.save_html(a, tmp_path / "y.html", path=tmp_path / "z.html")


# ---- in a real browser -----------------------------------------------------------------------

#: Appended to a page: after rendering, writes what the reader sees into <body data-measure>.
MEASURE = """<script>setTimeout(function(){var mounts=[],cols=[],heatmaps=[];
document.querySelectorAll('.tjs-cv').forEach(function(m){var r=m.getBoundingClientRect(),bottom=r.top;
 m.querySelectorAll('*').forEach(function(e){if(e.children.length===0){var b=e.getBoundingClientRect();
  if(b.height>0)bottom=Math.max(bottom,b.bottom);}});
 mounts.push({element:m.getAttribute('data-element'),height:r.height,blank:r.bottom-bottom,text:m.textContent});});
document.querySelectorAll('.tjs-hm').forEach(function(h){heatmaps.push(h.querySelectorAll('tbody tr').length);});
document.querySelectorAll('.tjs-hm th.col').forEach(function(th){var s=th.firstChild,a=s.getBoundingClientRect(),
 b=th.getBoundingClientRect();cols.push({text:s.textContent,title:th.title,clipped:s.scrollHeight>s.clientHeight+1,
 inside:a.top>=b.top-1&&a.bottom<=b.bottom+1&&a.left>=b.left-1&&a.right<=b.right+1});});
document.body.setAttribute('data-measure',JSON.stringify({mounts:mounts,cols:cols,heatmaps:heatmaps,
 missing:document.querySelectorAll('.tjs-missing').length}));},DELAY);</script>"""

def _measure(page, tmp_path, *flags, delay_ms=3000):
    assert CHROMIUM, "Chromium is required here (TJS_BROWSER_REQUIRED=1)"
    path = tmp_path / "page.html"
    path.write_text(page.replace("</body>", MEASURE.replace("DELAY", str(delay_ms)) + "</body>"), encoding="utf-8")
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000", *flags,
                    "--dump-dom", path.as_uri()).stdout
    found = re.search(r'data-measure="([^"]*)"', dom)
    assert found, dom[:1000]
    return json.loads(html.unescape(found.group(1))), dom


def notebook_outputs():
    """The HTML outputs of a notebook session, in cell order (a fresh kernel)."""
    tokens = [" the", " cat", " sat", " on", " a", " capital", " mat", " and", " the", " dog"] * 3
    fisher = make_result(tokens, scope="fisher", position=25)
    semantic = make_result(tokens, scope="semantic", position=25)
    matrix = tjs.results.ScopeMatrix([make_result(tokens, position=p) for p in range(5, 30, 3)])
    views = [fisher, tjs.compare(fisher, semantic), matrix, fisher.show("heads"), semantic.show("tokens")]
    return [v._repr_html_() for v in views], tokens


def _notebook_page(outputs):
    """The page nbconvert exports (when installed), else the same outputs in order by hand."""
    try:
        import nbformat
        from nbconvert import HTMLExporter
    except ImportError:
        cells = "".join(f'<div class="output_html">{o}</div>' for o in outputs)
        return f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{cells}</body></html>"
    notebook = nbformat.v4.new_notebook()
    for i, output in enumerate(outputs):
        cell = nbformat.v4.new_code_cell(f"view_{i}", execution_count=i + 1)
        cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": output, "text/plain": "view"})]
        notebook.cells.append(cell)
    page, _ = HTMLExporter().from_notebook_node(notebook)
    return page


@needs_browser
def test_a_saved_notebook_renders_every_view_from_one_bundle(fresh_kernel, tmp_path):
    outputs, tokens = notebook_outputs()
    assert [o.count(BUNDLE_MARK) for o in outputs] == [1, 0, 0, 0, 0]
    page = _notebook_page(outputs)
    assert page.count(BUNDLE_MARK) == 1
    seen, dom = _measure(page, tmp_path)
    assert seen["missing"] == 0
    expected = sum(o.count('class="tjs-cv"') for o in outputs)
    assert len(seen["mounts"]) == expected >= 9
    parser = _RenderedText()
    parser.feed(dom)
    assert len(parser.texts) == expected
    for mount in seen["mounts"]:
        assert "cat" in mount["text"] and "capital" in mount["text"], mount
        # CircuitsVis's ColoredTokensMulti pads 20 px per value column + 30 px below the tokens.
        assert mount["blank"] <= 12, mount
    # Heatmaps: layer x position (3 rows) and layer x head (2) for fisher, and again for both
    # results of the comparison; 9 matrix rows; then the heads-only view.
    assert seen["heatmaps"] == [3, 2, 3, 2, 3, 2, 9, 2]
    labels = {c["text"] for c in seen["cols"]}
    assert {f"{i}:{t}" for i, t in enumerate(tokens)} <= labels  # full token labels, e.g. "5: capital"
    for col in seen["cols"]:
        assert col["inside"] and not col["clipped"] and col["title"] == col["text"], col


@needs_browser
def test_a_view_without_the_bundle_says_how_to_load_it(tmp_path, monkeypatch):
    monkeypatch.setitem(views_html._notebook, "bundle_sent", True)  # the bundle's output was cleared
    page = f"<!DOCTYPE html><html><body>{make_result()._repr_html_()}</body></html>"
    seen, _ = _measure(page, tmp_path, "--virtual-time-budget=30000", delay_ms=25000)  # the loader waits 20 s
    assert seen["missing"] == len(seen["mounts"]) == 3
    assert all("init_notebook()" in mount["text"] for mount in seen["mounts"])
    assert sorted(seen["heatmaps"]) == [2, 3]  # heatmaps need no CircuitsVis


# ---- in a real Jupyter kernel ----------------------------------------------------------------

def test_a_real_kernel_shows_the_bundle_once_and_a_figure_once(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="pip install nbclient ipykernel to run views in a real kernel")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    import os
    from pathlib import Path

    import nbformat

    tests = Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cells = ["from scope_fixtures import make_result\nr = make_result(scope='fisher')",
             "r", "r.show('heads')", "fig = r.plot()\nfig", "%matplotlib inline\nfig = r.plot(); fig", "print(r.show())"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = [cell.outputs for cell in notebook.cells]
    first, second = outputs[1][0]["data"]["text/html"], outputs[2][0]["data"]["text/html"]
    assert first.count(BUNDLE_MARK) == 1 and BUNDLE_MARK not in second and "Layer × head" in second
    for figure_cell in outputs[3:5]:
        images = [o for o in figure_cell if "image/png" in o.get("data", {})]
        assert len(images) == 1 and len(figure_cell) == 1, figure_cell  # the figure, once
    assert "<ScopeView 'fisher scope': tokens, layers, heads" in outputs[5][0]["text"]


# ---- a view displayed twice, batches, packed data, a re-run cell ---------------------------------


MOUNT = re.compile(r'id="(tjs-cv-[0-9a-f]{12})"')


def test_a_view_displayed_twice_gets_its_own_element_ids(fresh_kernel):
    view = make_result().show()
    first, second = view._repr_html_(), view._repr_html_()
    ids_first, ids_second = MOUNT.findall(first), MOUNT.findall(second)
    assert len(ids_first) == len(ids_second) == 5  # 3 CircuitsVis mounts + 2 heatmaps
    assert not set(ids_first) & set(ids_second)
    # Each id is still referenced by the script that renders into it.
    for mount in ids_second:
        assert second.count(mount) == 2


@needs_browser
def test_a_view_displayed_twice_renders_twice(fresh_kernel, tmp_path):
    view = make_result().show()
    seen, _ = _measure(_notebook_page([view._repr_html_(), view._repr_html_()]), tmp_path)
    assert seen["missing"] == 0
    assert len(seen["mounts"]) == 6 and all("cat" in m["text"] for m in seen["mounts"]), seen["mounts"]
    assert seen["heatmaps"] == [3, 2, 3, 2]  # not [6, 4, 0, 0]: each display draws its own


def test_save_html_of_a_batch_over_different_prompts_or_of_matrices(tmp_path):
    """`tjs.save_html(batch, path=...)` saves what `batch.show()` shows (it tried to compare the
    items, which needs one prompt's tokens and ScopeResults)."""
    other = make_result(("a", " dog", " ran"), position=2)
    batch = tjs.results.ScopeBatch([make_result(), other])
    for path in (tjs.save_html(batch, path=tmp_path / "b.html"), tjs.save_html(batch, tmp_path / "b2.html")):
        text = path.read_text(encoding="utf-8")
        assert "Prompt 0" in text and "Prompt 1" in text and " dog" in text
    matrices = tjs.results.ScopeBatch([tjs.results.ScopeMatrix([make_result(position=p) for p in (3, 4)]),
                               tjs.results.ScopeMatrix([make_result(("a", " dog", " ran"), position=p) for p in (1, 2)])])
    text = tjs.save_html(matrices, path=tmp_path / "m.html").read_text(encoding="utf-8")
    assert text.count("tjsMatrix(") == 2
    # A list of results on one prompt is still a comparison.
    assert "Comparison" in tjs.save_html([make_result(), make_result()], path=tmp_path / "c.html").read_text()


@pytest.mark.parametrize("peak", [1e-42, 1e-30, 1.0, 3e38])
def test_packed_data_keeps_tiny_and_huge_scores(peak):
    """Scores below ~1e-41 packed as infinity: the step (peak / 9999) underflowed in float32."""
    from tl_jacobian_scopes.views.html import _pack

    values = torch.tensor([1.0, 0.5, 0.0, 0.25]) * peak
    step, shape, data = _pack(values)["$tjs"]
    assert shape == [4] and all(isinstance(d, int) for d in data), data
    decoded = [d * step for d in data]
    expected = values.double().tolist()
    for got, want in zip(decoded, expected):
        assert abs(got - want) <= 1e-4 * peak


class _FakeKernel:
    def __init__(self):
        self.parent = {}

    def get_parent(self, channel="shell"):
        return self.parent


class _FakeShell:
    def __init__(self):
        self.kernel = _FakeKernel()


def test_rerunning_the_cell_that_carried_the_bundle_carries_it_again(fresh_kernel, monkeypatch):
    """'Run All' (or re-running the first view's cell) in the same kernel replaced the only output
    holding CircuitsVis by one without it: the saved notebook then rendered no view offline."""
    IPython = pytest.importorskip("IPython")
    from tl_jacobian_scopes.views import html as views_html

    monkeypatch.setitem(views_html._notebook, "carrier", None)
    shell = _FakeShell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    mark = "var CircuitsVis"

    def run(cell, request):
        shell.kernel.parent = {"header": {"msg_id": request}, "metadata": {"cellId": cell}}
        return make_result()._repr_html_().count(mark)

    assert run("cell-a", "req-1") == 1  # the first view
    assert run("cell-a", "req-1") == 0  # a second view in the same execution
    assert run("cell-b", "req-2") == 0  # a later cell
    assert run("cell-a", "req-3") == 1  # cell a re-run: its old output (and bundle) is replaced
    assert run("cell-b", "req-4") == 0
    shell.kernel.parent = {"header": {"msg_id": "req-5"}}  # a front end without cell ids
    assert make_result()._repr_html_().count(mark) == 0


def test_an_empty_batch_displays_as_text():
    """Displaying an empty batch (e.g. a filtered one) raised ScopeError in the HTML formatter."""
    empty = tjs.results.ScopeBatch([])
    assert empty._repr_html_() is None and repr(empty).startswith("ScopeBatch(0")
    with pytest.raises(tjs.ScopeError, match="empty"):
        empty.show()


# ---- show() parts as a list ----------------------------------------------------------------------


def test_show_takes_parts_as_names_or_as_a_list():
    r = make_result()
    assert r.show(["tokens"]).parts == r.show("tokens").parts == ["tokens"]
    assert r.show(("tokens",))._repr_html_().count("tjs-cv-") == r.show("tokens")._repr_html_().count("tjs-cv-")
    for bad in (["tokens", "heatmap"], ["raw"], [3]):
        with pytest.raises(tjs.OptionError, match="parts must be names among"):
            r.show(bad)
