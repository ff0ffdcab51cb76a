"""Regression tests for defects found reviewing issue 11's new features (views, files, batches,
generation, patching results)."""

import re

import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result
from test_notebook_views import _measure, _notebook_page, fresh_kernel, needs_browser  # noqa: F401

MOUNT = re.compile(r'id="(tjs-cv-[0-9a-f]{12})"')


# ---- a view displayed twice ------------------------------------------------------------------

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


# ---- tjs.save_html of a batch ----------------------------------------------------------------

def test_save_html_of_a_batch_over_different_prompts_or_of_matrices(tmp_path):
    """`tjs.save_html(batch, path=...)` saves what `batch.show()` shows (it tried to compare the
    items, which needs one prompt's tokens and ScopeResults)."""
    other = make_result(("a", " dog", " ran"), position=2)
    batch = tjs.ScopeBatch([make_result(), other])
    for path in (tjs.save_html(batch, path=tmp_path / "b.html"), tjs.save_html(batch, tmp_path / "b2.html")):
        text = path.read_text(encoding="utf-8")
        assert "Prompt 0" in text and "Prompt 1" in text and " dog" in text
    matrices = tjs.ScopeBatch([tjs.ScopeMatrix([make_result(position=p) for p in (3, 4)]),
                               tjs.ScopeMatrix([make_result(("a", " dog", " ran"), position=p) for p in (1, 2)])])
    text = tjs.save_html(matrices, path=tmp_path / "m.html").read_text(encoding="utf-8")
    assert text.count("tjsMatrix(") == 2
    # A list of results on one prompt is still a comparison.
    assert "Comparison" in tjs.save_html([make_result(), make_result()], path=tmp_path / "c.html").read_text()


# ---- PatchingResult: NaN cells and tampered files --------------------------------------------

def _patching(values, site="head", clean=("a", " b", " c"), corrupted=None):
    rows, cols = values.shape
    col_labels = [f"H{h}" for h in range(cols)] if site == "head" else [f"{i}:{t}" for i, t in enumerate(clean)][:cols]
    return tjs.PatchingResult(
        values=values, metric="m", method="activation patching", site=site,
        row_labels=[f"L{i}" for i in range(rows)], col_labels=col_labels, clean_str_tokens=list(clean),
        corrupted_str_tokens=list(corrupted if corrupted is not None else clean), answer_str=" x", wrong_str=" y",
        ld_clean=2.0, ld_corrupted=-1.0)


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


# ---- packed view data ------------------------------------------------------------------------

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


# ---- re-running the cell that carries the bundle ---------------------------------------------

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


# ---- equality --------------------------------------------------------------------------------

def test_results_compare_equal_by_content_and_batches_like_lists(tmp_path):
    """`==` on two results (or batches, as lists) raised 'Boolean value of Tensor ... ambiguous'."""
    import copy

    r = make_result()
    r.scores[0] = float("nan")
    assert r == copy.deepcopy(r) and not r != copy.deepcopy(r)
    assert tjs.load(r.save_json(tmp_path / "r.json")) == r  # a round trip, NaN included
    changed = copy.deepcopy(r)
    changed.scores[1] += 1e-3
    assert r != changed and r != "r"
    batch = tjs.ScopeBatch([r, make_result(position=3)])
    assert batch == copy.deepcopy(batch) and batch != tjs.ScopeBatch([r, changed])
    assert tjs.load(batch.save_json(tmp_path / "b.json")) == batch
    matrix = tjs.ScopeMatrix([make_result(position=p) for p in (3, 4)])
    assert matrix == copy.deepcopy(matrix) and matrix != tjs.ScopeMatrix([make_result(position=3)])
    patching = _patching(torch.tensor([[0.5, float("nan")]]))
    assert patching == copy.deepcopy(patching) and tjs.load(patching.save_json(tmp_path / "p.json")) == patching


def test_an_empty_batch_displays_as_text():
    """Displaying an empty batch (e.g. a filtered one) raised ScopeError in the HTML formatter."""
    empty = tjs.ScopeBatch([])
    assert empty._repr_html_() is None and repr(empty).startswith("ScopeBatch(0")
    with pytest.raises(tjs.ScopeError, match="empty"):
        empty.show()


# ---- tampered files --------------------------------------------------------------------------

def test_tampered_internal_maps_and_batch_kinds_are_refused(tmp_path):
    """A file with some internal maps null loaded, then show() failed on an assert; a batch item
    whose kind is a list raised TypeError (unhashable) instead of DataFileError."""
    import json

    path = make_result().save_json(tmp_path / "r.json")
    assert tjs.load(path).show().to_html()  # the untouched file has internals and shows them
    for change in ({"attn_scores": None}, {"head_scores": None},
                   {"mlp_scores": json.loads(path.read_text())["mlp_scores"][:1]}):
        data = json.loads(path.read_text())
        data.update(change)
        (tmp_path / "t.json").write_text(json.dumps(data))
        with pytest.raises(tjs.DataFileError):
            tjs.load(tmp_path / "t.json")
    batch = tjs.ScopeBatch([make_result()]).to_dict()
    batch["items"][0]["kind"] = []
    (tmp_path / "b.json").write_text(json.dumps(batch))
    with pytest.raises(tjs.DataFileError):
        tjs.load(tmp_path / "b.json")
