"""How a result reports itself: the CLI's diagnostics legend, top-k over the explained span
only, and the documented MissingPackageError for static figures without matplotlib. Tiny
random models only (cheap)."""

from __future__ import annotations

import sys

import pytest

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.cli import PARAM_LEGEND, format_matrix, format_result
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny():
    model, _ = tiny_model("gpt2", "bridge")
    return model


PROMPT = "the cat sat on the mat"


def test_cli_report_explains_every_diagnostic(tiny) -> None:
    r = tjs.fisher_scope(tiny, PROMPT, rank=1)
    text = format_result(r)
    for key in ("rank", "n_probes", "trace_F", "captured_trace"):
        assert f"{key}=" in text
        assert f"  {key}: {PARAM_LEGEND[key]}" in text
    t = format_result(tjs.temperature_scope(tiny, PROMPT))
    assert "y_norm=" in t and PARAM_LEGEND["y_norm"] in t


def test_top_lists_only_the_explained_span(tiny) -> None:
    m = tjs.semantic_scope(tiny, PROMPT, positions="all")
    early = m[1]  # explains the prediction after token 1: tokens 0 and 1 only
    assert early.position == 1
    top = early.top(3)
    assert [t.position for t in top] and all(t.position <= early.position for t in top)
    assert len(top) == 2
    for r in m:
        assert all(t.position <= r.position for t in r.top(3))
    # The CLI's --positions all report uses the same top(k).
    lines = format_matrix(m).splitlines()[1:]
    for r, line in zip(m, lines):
        listed = [int(item.split(":")[0]) for item in line.split("-> ")[1].split(None, 1)[1].split(", ")]
        assert max(listed) <= r.position


def test_plot_without_matplotlib_names_the_extra(tiny, monkeypatch) -> None:
    r = tjs.semantic_scope(tiny, PROMPT)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    for call in (r.plot, lambda: r.save_png("never.png")):
        with pytest.raises(tjs.MissingPackageError, match=r"pip install 'tl_jacobian_scopes\[plot\]'"):
            call()


