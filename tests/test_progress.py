"""The progress line: quiet for fast work, updated in place in a notebook, final state kept."""

import re
import time

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model
from tl_jacobian_scopes import progress as P


class FakeHandle:
    def __init__(self, log):
        self.log = log

    def update(self, bundle, raw=False):
        assert raw
        self.log.append(("update", bundle))


@pytest.fixture
def fake_kernel(monkeypatch):
    """IPython's display replaced by a recorder: ``log`` lists ("display"|"update", bundle)."""
    log = []

    def display(bundle, raw=False, display_id=False):
        assert raw and display_id is True
        log.append(("display", bundle))
        return FakeHandle(log)

    monkeypatch.setattr(P, "_kernel_display", lambda: display)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    return log


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", "bridge")[0]


def test_display_handle_ends_in_final_state_with_total_and_escapes(fake_kernel):
    with P.Progress("<b>fisher</b> scope", total=37, unit="positions", enabled=True) as bar:
        for _ in range(37):
            bar.advance(1)
    kinds = [kind for kind, _ in fake_kernel]
    assert kinds[0] == "display" and set(kinds[1:]) == {"update"}
    assert len(kinds) <= 4  # throttled: 37 quick steps are not 37 redraws
    final = fake_kernel[-1][1]
    assert final["text/plain"].startswith("<b>fisher</b> scope: 37/37 positions, ")
    assert final["text/plain"].endswith(", done") and "%" not in final["text/plain"]
    assert "&lt;b&gt;fisher&lt;/b&gt;" in final["text/html"] and "<b>" not in final["text/html"]
    assert 'value="37.000" max="37.000"' in final["text/html"]


def test_fast_work_shows_nothing_and_slow_work_appears_after_the_delay(fake_kernel, monkeypatch):
    with P.Progress("fast", total=3) as bar:
        bar.advance(3)
    assert fake_kernel == []
    monkeypatch.setattr(P, "DELAY", 0.05)
    with P.Progress("slow", total=3) as bar:
        bar.advance(1)
        assert fake_kernel == []  # not yet 0.05 s
        time.sleep(0.08)
        bar.advance(1)
        assert [k for k, _ in fake_kernel] == ["display"] and "2/3 steps" in fake_kernel[0][1]["text/plain"]
        bar.advance(1)
    assert fake_kernel[-1][1]["text/plain"].startswith("slow: 3/3 steps") and fake_kernel[-1][0] == "update"


def test_errors_leave_a_stopped_line_and_nested_lines_stay_silent(fake_kernel):
    with pytest.raises(RuntimeError):
        with P.Progress("outer", total=4, enabled=True) as bar:
            bar.advance(1)
            with P.Progress("inner", total=2, enabled=True) as inner:
                inner.advance(2)
            raise RuntimeError("boom")
    texts = [bundle["text/plain"] for _, bundle in fake_kernel]
    assert all(t.startswith("outer") for t in texts)
    assert texts[-1].startswith("outer: 1/4 steps, ") and texts[-1].endswith(", stopped")
    fake_kernel.clear()
    with P.Progress("after the error", total=1, enabled=True) as bar:  # the outer line let go
        bar.advance(1)
    assert fake_kernel and fake_kernel[-1][1]["text/plain"].endswith("done")


def test_tqdm_disable_and_progress_false_silence_everything(fake_kernel, monkeypatch):
    with P.Progress("off", total=2, enabled=False) as bar:
        bar.advance(2)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with P.Progress("env", total=2, enabled=True) as bar:
        bar.advance(2)
    assert fake_kernel == []


def test_terminal_bar_only_when_forced_or_on_a_tty(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(P, "_kernel_display", lambda: None)
    monkeypatch.setattr(P, "DELAY", 0.0)
    with P.Progress("auto", total=2) as bar:  # stderr is captured: not a terminal
        bar.advance(2)
    assert capsys.readouterr().err == ""
    with P.Progress("forced", total=2, unit="texts", enabled=True) as bar:
        bar.advance(2)
    err = capsys.readouterr().err
    assert "forced: 100%" in err and "2/2 texts" in err and "done" in err


def test_scope_calls_report_every_position_without_changing_results(fake_kernel, model):
    ids = torch.arange(3, 12)
    quiet = tjs.fisher_scope(model, ids, positions="all", progress=False)
    assert fake_kernel == []
    shown = tjs.fisher_scope(model, ids, positions="all", progress=True)
    torch.testing.assert_close(shown.scores, quiet.scores, rtol=0, atol=0)
    final = fake_kernel[-1][1]["text/plain"]
    assert final.startswith(f"Fisher Scope: {len(ids)}/{len(ids)} positions, ") and final.endswith("done"), final
    fake_kernel.clear()
    batch = tjs.jacobian_scope(model, [ids, ids[:5], ids[:7]], "loo", batch_size=1, progress=True)
    assert fake_kernel[-1][1]["text/plain"].startswith("leave-one-out: 3/3 prompts") and len(batch) == 3
    assert type(batch) is tjs.results.ScopeBatch and isinstance(batch[0], tjs.results.ScopeResult)


NOTEBOOK_CELLS = [
    "import time\nimport torch\nimport tl_jacobian_scopes as tjs\nfrom tiny_models import tiny_model\n"
    "from tl_jacobian_scopes.progress import Progress\nmodel = tiny_model('gpt2', 'bridge')[0]",
    "m = tjs.fisher_scope(model, torch.arange(3, 12), positions='all', progress=True)",
    "with Progress('slow loop', total=6, unit='steps', enabled=True) as bar:\n"
    "    for _ in range(6):\n        time.sleep(0.15)\n        bar.advance(1)",
]


def test_saved_notebook_keeps_the_final_state(tmp_path):
    """A real kernel (nbclient): the saved outputs show the final line, not the first one."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import pathlib

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    tests_dir = str(pathlib.Path(__file__).parent)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": tests_dir}}).execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(notebook, path)
    saved = nbformat.read(path, as_version=4)
    for cell, expected in ((saved.cells[1], "Fisher Scope: 9/9 positions"), (saved.cells[2], "slow loop: 6/6 steps")):
        outputs = [o for o in cell.outputs if o.output_type == "display_data"]
        assert len(outputs) == 1, cell.outputs  # one line, updated in place
        text = outputs[0].data["text/plain"]
        assert text.startswith(expected) and text.endswith(", done") and "%" not in text, text
        assert "done" in outputs[0].data["text/html"]


# ---- the count and the percentage agree ----------------------------------------------------------


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
