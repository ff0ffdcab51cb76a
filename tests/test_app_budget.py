"""The app as a shared tool (issue 20): a work budget, one model hold per request, background
work that yields, jobs that end with their session, cleanup, no uploads, named API endpoints.

Handlers are called directly where no browser is needed (cheap); a few checks use a served app.
"""

import re
import threading
import time
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")

import tl_jacobian_scopes as tjs  # noqa: E402
from tl_jacobian_scopes.app import build_app  # noqa: E402
from tl_jacobian_scopes.app import engine as engine_module  # noqa: E402
from tl_jacobian_scopes.app import state as state_module  # noqa: E402
from tl_jacobian_scopes.app.engine import Engine, Request  # noqa: E402
from tl_jacobian_scopes.app.state import ModelSlot  # noqa: E402
from tl_jacobian_scopes.models.access import hook_count  # noqa: E402

from app_helpers import PROMPT, QUIET, CountingLock, Session, handler  # noqa: E402


@pytest.fixture
def counted(monkeypatch):
    lock = CountingLock()
    monkeypatch.setattr(state_module, "model_lock", lambda model: lock)
    return lock


@pytest.fixture(scope="module")
def app(default_model, tmp_path_factory):
    return build_app(default_model, downloads=tmp_path_factory.mktemp("budget"))


def _explain(blocks, prompt, scope="fisher", mode="rank", rank=1, samples=24, session="s", state=None):
    return handler(blocks, "explain")(prompt, scope, "", "", mode, rank, samples, 0, False, state,
                                      Session(session), QUIET)


# ---- item 1: one hold per request; background work bounded, nearest first, yielding ----------------


def test_an_explanation_holds_the_model_once(app, counted):
    """Old code: the size, the scope call and the top predictions each took the model's lock (3)."""
    out = _explain(app, "One, two, three, four", "temperature", session="once")
    assert "data-run" in out[0], out[0]
    assert counted.count == 1


def test_background_work_is_bounded_and_nearest_the_explained_token_first(default_model):
    from tl_jacobian_scopes.app.budget import Budget

    engine = Engine(ModelSlot(model=default_model), budget=Budget(precompute=5, chunk=2))
    request = Request("a b c d e f g h i j k l m n o p", "temperature")
    n = engine.size(request)
    seen = []
    ready = engine.precompute(request, progress=lambda done, total: seen.append((done, total)), around=8)
    done = {p for p in range(n) if engine.cached(request, p) is not None}
    assert ready == 5 and done == {6, 7, 8, 9, 10}  # |p - 8| <= 2, ties to the left first
    assert seen == [(2, 5), (4, 5), (5, 5)]  # steps of 2
    direct = tjs.temperature_scope(default_model, request.prompt, position=10, progress=False)
    assert float((engine.cached(request, 10).scores - direct.scores).abs().max()) <= 1e-4 * float(
        direct.scores.abs().max())


def test_a_waiting_request_goes_before_the_next_background_step():
    """While background work holds the model, a request that starts waiting gets it before the
    background's next step, whichever session started either."""

    class Model:
        pass

    slot, order = ModelSlot(model=Model()), []
    holding, release = threading.Event(), threading.Event()

    def background(name, first=False):
        with slot.hold(background=True):
            order.append(name)
            if first:
                holding.set()
                release.wait(5)

    first = threading.Thread(target=background, args=("background 1", True))
    first.start()
    holding.wait(5)
    def foreground():
        with slot.hold():
            order.append("request")

    request = threading.Thread(target=foreground)
    request.start()
    time.sleep(0.2)  # the request now waits for the model
    second = threading.Thread(target=background, args=("background 2",))
    second.start()
    time.sleep(0.2)
    release.set()
    for t in (first, request, second):
        t.join(5)
    assert order == ["background 1", "request", "background 2"]


def test_a_session_that_ends_or_starts_a_new_request_ends_its_jobs(app, default_model):
    """Unload (the page closed) and a new request both stop the session's running background
    work within a step; the model is left as it was."""
    blocks, engine = app, app.tjs_engine
    for ender in ("unload", "retire"):
        request = Request(f"{ender} " + "word " * 60, "temperature")  # nothing cached yet
        n = engine.size(request)
        state = {"request": request, "position": n - 1, "runs": 1}
        session = f"ender-{ender}"
        worker = threading.Thread(target=lambda: handler(blocks, "precompute")(state, Session(session)))
        worker.start()
        deadline = time.monotonic() + 60
        while engine.cached(request, n - 2) is None and time.monotonic() < deadline:  # the first step is done
            time.sleep(0.02)
        started = time.monotonic()
        handler(blocks, ender)(Session(session))
        worker.join(30)
        assert not worker.is_alive() and time.monotonic() - started < 5
        assert sum(engine.cached(request, p) is not None for p in range(n)) < min(n, 64)
    assert hook_count(default_model) == 0


def test_a_request_holds_the_model_at_most_the_budgets_time(default_model):
    """The longest allowed job is bounded in time: another session waits at most max_seconds."""
    from tl_jacobian_scopes.app.budget import Budget
    from tl_jacobian_scopes.app.state import OverTime

    engine = Engine(ModelSlot(model=default_model), budget=Budget(max_seconds=0.5))
    started = time.monotonic()
    with pytest.raises(OverTime, match="0.5 s, this app's limit"):
        engine.result(Request(PROMPT, "fisher", fisher_mode="exact"))
    assert time.monotonic() - started < 10 and hook_count(default_model) == 0
    assert engine.active == 0


# ---- item 2: client-controlled sizes refused before any model work ----------------------------------


@pytest.mark.parametrize("mode, rank, samples, fragment", [
    ("stochastic", 1, 200_000, "samples 200000 is over"), ("rank", 10_000, 24, "rank 10000 is over")])
def test_sizes_over_the_budget_are_refused_before_model_work(app, counted, monkeypatch, mode, rank, samples,
                                                              fragment):
    monkeypatch.setattr(engine_module, "resolve_scope", lambda scope: pytest.fail("the scope ran"))
    out = _explain(app, PROMPT, "fisher", mode, rank, samples, session="sizes")
    assert "tjs-error" in out[0] and fragment in out[0], out[0]
    assert counted.count == 0


def test_a_long_pasted_series_is_refused_before_model_work(app, counted):
    values = ", ".join(str(i % 7) for i in range(100_000))
    message, *_ = handler(app, "forecast")("paste", 60, 0, values, "temperature", Session("paste"), QUIET)
    assert "tjs-error" in message and "up to 200 values" in message, message
    assert counted.count == 0


def test_a_lone_surrogate_prompt_is_a_clear_message(app):
    out = _explain(app, "Hello \ud800 world", "fisher", session="surrogate")
    assert "tjs-error" in out[0] and "not valid Unicode" in out[0] and "Unexpected" not in out[0], out[0]


def test_a_full_trace_estimate_is_limited_to_short_prompts(app, counted, monkeypatch):
    monkeypatch.setattr(engine_module, "resolve_scope", lambda scope: pytest.fail("the scope ran"))
    out = _explain(app, "word " * 40, "fisher", "exact", session="trace")
    assert "tjs-error" in out[0] and "limited to 24 tokens" in out[0], out[0]


# ---- item 3: cleanup ---------------------------------------------------------------------------------


def test_session_files_are_freed_at_unload_and_everything_at_close(default_model, tmp_path):
    blocks = build_app(default_model)  # its own temporary folder
    folder = blocks.tjs_folder
    state = {"request": Request(PROMPT, "temperature"), "position": 3, "runs": 1}
    for session in ("a", "b"):
        paths, _ = handler(blocks, "files")(state, False, Session(session))
        assert paths
    sessions = lambda: [p for p in folder.iterdir() if p.is_dir() and len(p.name) == 32]  # noqa: E731 (Gradio's own are 64)
    assert len(sessions()) == 2
    handler(blocks, "unload")(Session("a"))
    assert len(sessions()) == 1
    blocks.close()
    assert not folder.exists()


def test_idle_sessions_are_freed_and_the_folder_stays_under_its_limit(default_model, tmp_path):
    from tl_jacobian_scopes.app.budget import Budget
    from tl_jacobian_scopes.app.layout import folder_size

    blocks = build_app(default_model, downloads=tmp_path / "d", budget=Budget(idle_s=0.5, cache_mb=0.05))
    state = {"request": Request(PROMPT, "temperature"), "position": 3, "runs": 1}
    for session in ("x", "y", "z"):
        handler(blocks, "files")(state, False, Session(session))
        assert folder_size(tmp_path / "d") <= 0.05 * 2**20 or len(list((tmp_path / "d").iterdir())) == 1
    deadline = time.monotonic() + 10
    while len(blocks.tjs_sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(blocks.tjs_sessions) == 0 and not any((tmp_path / "d").iterdir())
    blocks.close()
    assert (tmp_path / "d").exists()  # a folder the caller gave is kept (only the app's files go)


# ---- item 5 (UX), cheap checks ----------------------------------------------------------------------


def test_an_error_clears_the_previous_results(app):
    good = _explain(app, PROMPT, "temperature", session="stale")
    assert "data-pos" in good[1]
    bad = handler(app, "explain")(PROMPT, "semantic", " Paris is lovely", "", "rank", 1, 24, 0, False, good[5],
                                  Session("stale"), QUIET)
    assert "tjs-error" in bad[0]
    assert bad[1] == "" and bad[2] == "" and bad[4] == "" and bad[5] is None


def test_samples_and_seed_show_only_for_the_stochastic_estimate(app):
    by_id = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    assert by_id["tjs-rank"].visible and not by_id["tjs-samples"].visible and not by_id["tjs-seed"].visible
    assert "Work budget" in str(by_id["tjs-budget-line"].value)
    assert "Fisher" in str(by_id["tjs-scope-help"].value)


def test_stop_is_not_a_cancellation(app):
    """Old code cancelled the running events (the page showed red "Error" badges and never the
    app's "Stopped"): Stop only sets the session's switch, and the request answers "Stopped"."""
    assert all(not d.cancels for d in app.fns.values())
    out = {}
    stopper = lambda *a, **k: handler(app, "stop_session")(Session("stopper"))  # noqa: E731
    worker = threading.Thread(target=lambda: out.update(
        r=handler(app, "explain")(PROMPT, "fisher", "", "", "exact", 1, 24, 0, False, None, Session("stopper"),
                                  stopper)))
    worker.start()
    worker.join(120)
    assert "Stopped" in out["r"][0], out["r"][0]


# ---- a served app: no uploads, the named API, a closed page ends its work --------------------------

from browser import CHROMIUM, _free_port, needs_app_browser  # noqa: E402


@pytest.fixture(scope="module")
def served(default_model, tmp_path_factory):
    from tl_jacobian_scopes.app import launch

    from tl_jacobian_scopes.app.budget import Budget

    # A long time limit: here only the closed page may end the work.
    blocks = build_app(default_model, downloads=tmp_path_factory.mktemp("served"), budget=Budget(max_seconds=300))
    _, url, _ = launch(blocks, port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield blocks, url
    blocks.close()


def test_uploads_are_refused(served):
    import httpx

    _, url = served
    response = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("x.txt", b"x" * 4096)})
    assert response.status_code == 413, (response.status_code, response.text[:200])


def test_the_named_api_scripts_the_app_within_the_budget(served, default_model):
    from gradio_client import Client

    _, url = served
    client = Client(url, verbose=False)
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == {"/explain", "/click", "/compare", "/forecast"}
    out = client.predict(PROMPT, "temperature", api_name="/explain")
    expected = tjs.temperature_scope(default_model, PROMPT, progress=False)
    assert out["position"] == expected.position and out["predicted"] == expected.predicted_str
    assert max(abs(a - b) for a, b in zip(out["scores"], expected.scores.tolist())) <= 1e-4 * float(
        expected.scores.abs().max())
    at2 = client.predict(PROMPT, 2, "temperature", api_name="/click")
    assert at2["position"] == 2
    left, right = client.predict(PROMPT, "semantic", "fisher", api_name="/compare")
    assert (left["scope"], right["scope"]) == ("semantic", "fisher")
    forecast = client.predict("1, 2, 3, 4, 5, 6", "temperature", api_name="/forecast")
    assert len(forecast["value_scores"]) == 6 and forecast["mean"] is not None
    with pytest.raises(Exception, match="samples 100000 is over"):
        client.predict(PROMPT, "fisher", "", "", "stochastic", 1, 100_000, api_name="/explain")


@needs_app_browser
def test_a_closed_page_ends_its_work_within_seconds(served):
    """Exact Fisher started from a page, then the page closed: the server's work ends within a few
    seconds (old code: it ran to the end with no client)."""
    from playwright.sync_api import sync_playwright

    blocks, url = served
    engine = blocks.tjs_engine
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#tjs-run")
        page.fill("#tjs-prompt textarea", "Closing the page, one two three")
        page.check("#tjs-mode input[value='exact']")
        page.click("#tjs-run")
        deadline = time.monotonic() + 30
        while engine.active == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.active > 0
        time.sleep(0.5)
        page.close()
        closed = time.monotonic()
        while engine.active > 0 and time.monotonic() - closed < 20:
            time.sleep(0.1)
        assert engine.active == 0 and time.monotonic() - closed < 10, time.monotonic() - closed
        browser.close()


def test_the_tokens_come_with_a_colour_legend(default_model):
    from tl_jacobian_scopes.app.render import token_html

    result = tjs.fisher_scope(default_model, PROMPT, progress=False)
    text = token_html(result)
    peak = float(result.scores.max())
    assert 'class="tjs-legend"' in text and f"{peak:.3g}" in text and "linear-gradient" in text


def test_the_time_series_line_reads_as_text(app):
    message, frame, _, _ = handler(app, "forecast")("paste", 60, 0, "1, 2, 3, 4, 5, 6", "temperature",
                                                   Session("ts-text"), QUIET)
    assert "tjs-error" not in message, message
    import html as html_module
    import re

    shown = html_module.unescape(frame)
    assert "forecast of the next value (value #6" in shown
    norm = re.search(r"‖y‖ ([0-9.e+-]+)", shown).group(1)
    assert len(norm.replace(".", "")) <= 5  # 4 significant digits, not 60.6840934753418


def test_compare_shows_each_scope_in_its_colour_with_its_scale_and_no_controls(app, default_model):
    """Old code: CircuitsVis's ColoredTokensMulti in a frame, with its raw "Positive Bound" /
    "Negative Bound" inputs and its own red/blue palette beside the scopes' colours."""
    from tl_jacobian_scopes.views.html import SCOPE_COLORS

    message, shown = handler(app, "compare_scopes")("<b>x</b> is", "semantic", "fisher", "", "", "rank", 1, 24, 0,
                                                    Session("compare"), QUIET)
    assert "tjs-error" not in message, message
    assert "<iframe" not in shown and "<script" not in shown and "Bound" not in shown and "<b>x" not in shown
    for scope in ("semantic", "fisher"):
        row = shown.split(f'class="tjs-compare-row" data-scope="{scope}"')[1].split("tjs-compare-row")[0]
        r, g, b = (int(SCOPE_COLORS[scope][i:i + 2], 16) for i in (1, 3, 5))
        colours = set(re.findall(r"rgba\((\d+,\d+,\d+),", row))
        assert colours == {f"{r},{g},{b}"}, (scope, colours)  # one palette per scope, tokens and scale alike
        expected = tjs.SCOPES[scope](default_model, "<b>x</b> is", progress=False)
        peak = float(expected.scores.max())
        assert f"{peak:.3g}</div>" in row  # its scale: 0 … its own largest score
        scores = [float(v) for v in re.findall(r'data-score="([^"]+)"', row)]
        assert max(abs(a - b) for a, b in zip(scores, expected.scores.tolist())) <= 1e-4 * peak
    assert "not on one scale" in shown


def test_internals_are_inline_tables_whose_scale_leaves_out_the_first_token(app, default_model):
    """Old code: the library's page in a fixed 620-px iframe with its own scroll bar, drawn by
    scripts (blank until scrolled into view), on a scale set by the first token's column, which
    washed every other cell to white."""
    import html as html_module

    out = handler(app, "explain")(PROMPT, "temperature", "", "", "rank", 1, 24, 0, True, None, Session("int"), QUIET)
    shown = out[4]
    assert "tjs-error" not in out[0], out[0]
    assert "<iframe" not in shown and "<script" not in shown and "height:620px" not in shown
    resid_table, head_table = re.findall(r'<table class="tjs-hm">.*?</table>', shown)
    n_layers = default_model.cfg.n_layers
    body_rows = [table.split("<tbody>")[1].split("<tr>")[1:] for table in (resid_table, head_table)]
    assert len(body_rows[0]) == n_layers + 1 and len(body_rows[1]) == n_layers
    assert "position 0" in shown and "left out of the scale" in shown  # said in the legend
    expected = tjs.temperature_scope(default_model, PROMPT, internals=True, progress=False).internal("layer", "scaled")
    rows = [re.findall(r'<td title="([^"]*)" style="background:rgba\([0-9,]+,([0-9.]+)\)', row)
            for row in body_rows[0]]
    alpha = torch.tensor([[float(a) for _, a in row] for row in rows])
    shown_values = torch.tensor([[float(html_module.unescape(t).rsplit(": ", 1)[1]) for t, _ in row] for row in rows])
    assert torch.allclose(shown_values.double(), expected.double(), rtol=1e-3, atol=1e-6 * float(expected.abs().max()))
    assert float(expected[:, 0].max()) > 2 * float(expected[:, 1:].max())  # the sink this is about
    assert float((expected[:, 1:] / expected.max() > 0.1).float().mean()) < 0.5  # a scale set by position 0
    assert float(alpha[:, 1:].max()) == 1.0  # the rest reach full colour: not washed out
    assert float((alpha[:, 1:] > 0.1).float().mean()) > 0.6  # this page's scale: most cells show
    from tl_jacobian_scopes.app.render import internals_html

    hostile = internals_html(tjs.temperature_scope(default_model, "<img src=x onerror=alert(1)> &", internals=True,
                                                   progress=False))
    assert "<span>1:&lt;</span>" in hostile and "1:<" not in hostile and "0:<|im" not in hostile  # tokens escaped


def test_the_time_series_plot_title_reads_as_text(default_model):
    """Old code: "... forecast of value 6 (token 0 of it) · model"."""
    from tl_jacobian_scopes import timeseries as ts
    from tl_jacobian_scopes.timeseries.views import plot_forecast

    r = ts.forecast_scope(default_model, [1, 2, 3, 4, 5, 6], "temperature", progress=False)
    title = plot_forecast(r).axes[0].get_title()
    assert "of it" not in title and "token 0" not in title
    assert title.startswith("temperature scope of the forecast of the next value (value #6, counting from 0) · ")


def test_a_token_click_ends_the_sessions_running_request_first(default_model, tmp_path):
    """Old code: a click only queued behind the session's own running request (e.g. exact Fisher),
    which went on to its end. Now the click's first, queue-free handler ends it, leaving the
    background job alone."""
    from tl_jacobian_scopes.app.budget import Budget

    app = build_app(default_model, downloads=tmp_path / "click", budget=Budget(max_seconds=300))
    tokens = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "tjs-tokens")
    on_click = [f for f in app.fns.values() if any(t[0] == tokens._id and t[1] == "click" for t in f.targets)]
    assert [f.name for f in on_click] == ["retire_request", "click"] and on_click[0].queue is False
    done = []
    worker = threading.Thread(target=lambda: done.append(_explain(app, "Stop me by a click, one two three four",
                                                                  mode="exact", session="clicker")))
    worker.start()
    deadline = time.monotonic() + 30
    while app.tjs_engine.active == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.tjs_engine.active > 0
    background = app.tjs_stops.arm("clicker", "background")  # the prompt's background job
    on_click[0].fn(Session("clicker"))
    worker.join(20)
    assert not worker.is_alive() and "Stopped: the computation was cancelled" in done[0][0], done
    assert not background.is_set()
    app.close()


def test_one_progress_bar_and_no_overlay_from_background_work(app):
    """Old code: progress on all 7 outputs of a request (stacked bars) and a "processing" overlay
    from the background job right after "Done"."""
    fns = {getattr(d.fn, "__name__", ""): d for d in app.fns.values()}
    for name in ("explain", "click", "toggle_internals", "forecast", "compare_scopes"):
        shown_on = fns[name].show_progress_on
        assert shown_on is not None and len(shown_on) == 1, name
    assert fns["precompute"].show_progress == "hidden"


def test_many_sessions_leave_nothing_behind(default_model, tmp_path):
    """A cheap version of the load test (benchmarks/app_load.py): 30 sessions each explain, write
    their files and close; the app then holds no session, no switch and no file."""
    blocks = build_app(default_model, downloads=tmp_path / "many")
    for i in range(30):
        session = f"many-{i}"
        out = _explain(blocks, PROMPT, "temperature", session=session)
        assert "data-run" in out[0]
        handler(blocks, "files")(out[5], False, Session(session))
        handler(blocks, "unload")(Session(session))
    assert len(blocks.tjs_sessions) == 0 and len(blocks.tjs_stops) == 0
    assert not any((tmp_path / "many").iterdir())
    blocks.close()
