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
