"""The app's limits as a shared tool (issue 20): memory for results bounded in bytes, session
state freed, small probe chunks, over-time as a notice, SIGTERM and ``python -m``, Gradio's cache
in the app's folder, no uploads, only the named API, the last click wins, API checks as messages.

Handlers are called directly where no browser is needed; one served app covers the HTTP checks,
and one headless Chromium page checks that a closed page's session is freed.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")

from tl_jacobian_scopes.app import build_app  # noqa: E402
from tl_jacobian_scopes.app.budget import Budget  # noqa: E402
from tl_jacobian_scopes.app.engine import Engine, Request  # noqa: E402
from tl_jacobian_scopes.app.layout import folder_size  # noqa: E402
from tl_jacobian_scopes.app.state import ModelSlot, ResultCache, Stopped, approx_bytes  # noqa: E402
from tl_jacobian_scopes.models.access import hook_count  # noqa: E402

from app_helpers import PROMPT, QUIET, Session, handler  # noqa: E402
from browser import CHROMIUM, _free_port, needs_app_browser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def by_id(blocks, elem_id):
    return next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id)


# ---- 1: the results cache is bounded in bytes, not only in count -------------------------------------


def test_the_results_cache_is_bounded_by_bytes(default_model):
    """Old code: 4,096 results of any size (internals maps included) stayed in memory."""
    cache = ResultCache(size=1000, max_bytes=10_000)
    for i in range(50):
        cache.put(i, b"x" * 3000)
    assert cache.nbytes <= 10_000 and len(cache) == 3 and cache.get(49) is not None and cache.get(0) is None
    cache.put("big", b"x" * 50_000)  # alone over the limit: kept (it is being shown), the rest dropped
    assert len(cache) == 1 and cache.get("big") is not None
    assert Budget().results_mb == 256

    limit_mb = 0.01
    engine = Engine(ModelSlot(model=default_model), budget=Budget(results_mb=limit_mb))
    request = Request(PROMPT + " and the capital of Italy is", "temperature")
    with_maps = engine.result(request, internals=True)
    assert approx_bytes(with_maps) > 4 * approx_bytes(engine.result(request, position=2))  # maps weigh more
    engine.precompute(request)
    assert engine.rows.nbytes <= limit_mb * 2**20
    n = engine.size(request)
    assert 0 < len(engine.rows) < n  # some rows were dropped for the byte limit, not the count limit


# ---- 3: backward passes in chunks of at most 8 probes, a stop seen between them ----------------------


def test_backward_passes_use_at_most_the_budgets_probe_chunk_and_a_stop_ends_after_one(default_model, monkeypatch):
    """Old code: 64 probes per backward pass (about 5 s on CPU for exact Fisher), so a Stop or a
    closed page waited that long, and so did the next session's request."""
    from tl_jacobian_scopes.scopes import runner

    assert Budget().probe_chunk == 8
    chunks, stop = [], threading.Event()
    original = runner.batched_vjp

    def recording(*args, **kwargs):
        for sl, grads in original(*args, **kwargs):
            chunks.append(sl.stop - sl.start)
            if stop_after[0] and len(chunks) == stop_after[0]:
                stop.set()
            yield sl, grads

    monkeypatch.setattr(runner, "batched_vjp", recording)
    engine = Engine(ModelSlot(model=default_model), budget=Budget(max_seconds=300))
    stop_after = [0]
    engine.result(Request(PROMPT, "fisher", fisher_mode="stochastic", samples=24))
    assert len(chunks) >= 3 and max(chunks) <= 8, chunks
    chunks.clear()
    stop_after[0] = 1
    with pytest.raises(Stopped):
        engine.result(Request(PROMPT, "fisher", fisher_mode="stochastic", samples=32, seed=1), stop=stop)
    assert chunks == [8]  # the stop was seen right after the first chunk
    assert hook_count(default_model) == 0 and engine.active == 0
    # Outside the app, memory alone decides (the library's default is unchanged).
    chunks.clear()
    import tl_jacobian_scopes as tjs

    tjs.fisher_scope(default_model, PROMPT, rank=None, samples=24, progress=False)
    assert max(chunks) > 8


# ---- 4: over the time limit: stopped early, a notice with the estimate so far, no error -------------


def test_a_request_over_the_time_limit_is_a_stopped_notice_with_the_estimate_so_far(default_model, tmp_path):
    """Old code: the page showed the limit as a red error, with no idea how far the work got."""
    blocks = build_app(default_model, downloads=tmp_path / "d", budget=Budget(max_seconds=0.4))
    started = time.monotonic()
    out = handler(blocks, "explain")(PROMPT, "fisher", "", "", "exact", 1, 24, 0, False, None, Session("slow"), QUIET)
    assert time.monotonic() - started < 10
    assert out[0].startswith('<div class="tjs-msg tjs-info"') and "Stopped: this request would hold the model for "\
        "more than 0.4 s" in out[0], out[0]
    assert "% done after" in out[0] and "would take about" in out[0], out[0]
    assert out[1] == "" and out[5] is None  # nothing stale under the notice
    blocks.close()


# ---- 2: a session's state and files are freed (page closed, or idle) --------------------------------


def test_an_idle_sessions_gradio_state_is_freed(default_model, tmp_path):
    """Old code: Gradio kept every session's state (an hour after its page closed) and its copy of
    the page's configuration until 10,000 newer sessions came."""
    from gradio.state_holder import StateHolder

    blocks = build_app(default_model, downloads=tmp_path / "d", budget=Budget(idle_s=3))  # swept every 0.75 s
    holder = StateHolder()
    holder.set_blocks(blocks)  # what launch() does
    for session in ("seen-by-the-app", "closed", "fresh"):
        holder[session]  # Gradio makes a session's state on its first event
    holder.session_data["closed"].is_closed = True
    state = {"request": Request(PROMPT, "temperature"), "position": 2, "runs": 1}
    handler(blocks, "files")(state, False, Session("seen-by-the-app"))
    assert len(blocks.tjs_sessions) == 1 and any(blocks.tjs_folder.iterdir())
    deadline = time.monotonic() + 15
    while "closed" in holder.session_data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "closed" not in holder.session_data and "fresh" in holder.session_data  # closed: at the next sweep
    while holder.session_data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holder.session_data and not holder.time_last_used  # idle: freed after idle_s
    assert len(blocks.tjs_sessions) == 0 and len(blocks.tjs_stops) == 0 and not any(blocks.tjs_folder.iterdir())
    blocks.close()


@pytest.fixture(scope="module")
def served(default_model):
    from tl_jacobian_scopes.app import launch

    blocks = build_app(default_model)  # its own folder: everything under blocks.tjs_root
    _, url, _ = launch(blocks, port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield blocks, url.rstrip("/")
    blocks.close()
    assert not blocks.tjs_root.exists()


@needs_app_browser
def test_a_closed_pages_session_is_freed(served):
    """A page that explained something and closed: its Gradio state, stop switches and session
    record are gone within seconds (Gradio's unload), not an hour later."""
    from playwright.sync_api import sync_playwright

    blocks, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#tjs-run")
        page.check("#tjs-scope input[value='temperature']")
        page.click("#tjs-run")
        page.wait_for_selector("#tjs-message [data-run]", timeout=60_000)
        sessions = set(blocks.state_holder.session_data)
        assert sessions and blocks.tjs_sessions and len(blocks.tjs_stops)
        page.close()
        closed = time.monotonic()
        while (set(blocks.state_holder.session_data) & sessions or len(blocks.tjs_stops)) \
                and time.monotonic() - closed < 20:
            time.sleep(0.1)
        browser.close()
    assert not set(blocks.state_holder.session_data) & sessions and len(blocks.tjs_stops) == 0
    assert len(blocks.tjs_sessions) == 0 and time.monotonic() - closed < 15


# ---- 6: Gradio's cache is the app's own folder, capped, served, removed at shutdown -----------------


def test_gradio_cache_is_under_the_apps_folder_capped_and_served(served, default_model, tmp_path):
    import httpx
    from gradio import processing_utils

    blocks, url = served
    cache, root = blocks.tjs_cache, blocks.tjs_root
    assert cache.parent == root and blocks.tjs_folder == cache  # downloads served from the cache, no copy
    assert os.environ["GRADIO_TEMP_DIR"] == str(cache)
    assert {b.GRADIO_CACHE for b in blocks.blocks.values()} == {str(cache)}
    downloads = by_id(blocks, "tjs-downloads")
    state = {"request": Request(PROMPT, "temperature"), "position": 3, "runs": 1}
    paths, _ = handler(blocks, "files")(state, False, Session("cached"))
    moved = processing_utils.move_files_to_cache(downloads.postprocess(paths), downloads)  # as Gradio does
    cached = [Path(f["path"]) for f in moved]
    assert cached and all(cache in p.parents for p in cached)
    response = httpx.get(f"{url}/gradio_api/file={cached[0]}")
    assert response.status_code == 200 and response.content == cached[0].read_bytes()
    # The cap (here 2 MB, about one view and a half): the folders stay under it, give or take the
    # view just written (never deleted: the page is about to offer it).
    view = sum(Path(p).stat().st_size for p in paths)
    small = build_app(default_model, downloads=tmp_path / "d", budget=Budget(cache_mb=2))
    files = by_id(small, "tjs-downloads")
    for i in range(5):
        paths, _ = handler(small, "files")({**state, "position": 1 + i % 4, "runs": i}, False, Session(f"s{i}"))
        assert paths and all(Path(p).exists() for p in paths)
        processing_utils.move_files_to_cache(files.postprocess(paths), files)
        for where in (tmp_path / "d", small.tjs_cache):
            assert folder_size(where) <= 2 * 2**20 + view, (where, folder_size(where))
    for position in (1, 2, 3):  # one session's files: only those its page shows, not one set per request
        handler(small, "files")({**state, "position": position}, False, Session("same"))
    (same,) = [p for p in (tmp_path / "d").iterdir() if any(p.rglob("*position3.json"))]
    assert sorted(p.name for p in same.rglob("*") if p.is_file()) == [
        f"temperature_scope_position3.{ext}" for ext in ("html", "json", "png")]
    small_root = small.tjs_root
    small.close()
    assert not small_root.exists() and (tmp_path / "d").exists()


# ---- 7, 8, 10: no uploads; only the named endpoints; API checks are messages --------------------------


def test_uploads_are_refused_and_only_the_named_endpoints_answer(served):
    import httpx

    blocks, url = served
    for body in (b"", b"x" * 100_000):
        response = httpx.post(f"{url}/gradio_api/upload", files={"files": ("x.txt", body)})
        assert response.status_code == 413, response.text[:200]
    assert not any(blocks.tjs_cache.rglob("x.txt"))
    info = httpx.get(f"{url}/gradio_api/info").json()
    assert set(info["named_endpoints"]) == {"/explain", "/click", "/compare", "/forecast"}
    assert not info["unnamed_endpoints"]
    # The page's handlers share a hidden name; called by it, old code ran them (tracebacks in the log).
    for route in ("call/page", "call/v2/page", "run/page", "api/page", "call/retire"):
        assert httpx.post(f"{url}/gradio_api/{route}", json={"data": []}).status_code == 404, route
    assert httpx.post(f"{url}/gradio_api/call/explain", json={"data": [PROMPT, "temperature", "", "", "rank", 1, 24, 0]}).status_code == 200


def _call(url, name, data):
    """One call by name over plain HTTP (JSON can carry what gradio_client cannot encode); its
    final event and data."""
    import httpx

    event = httpx.post(f"{url}/gradio_api/call/{name}", content=json.dumps({"data": data}),
                       headers={"content-type": "application/json"}).json()["event_id"]
    text = httpx.get(f"{url}/gradio_api/call/{name}/{event}", timeout=120).text
    kind = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("event:")][-1]
    data = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("data:")][-1]
    return kind, json.loads(data)


def test_api_checks_are_clean_messages(served):
    """Old code: the request's checks ran outside the API's error wrapper (a bad rank was a generic
    error and a traceback in the log), /click took position 1.5 as 1, and a lone-surrogate prompt
    was an unexpected TypeError."""
    from gradio_client import Client

    _, url = served
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=r"position must be a whole number .*'1.5'"):
        client.predict(PROMPT, 1.5, "temperature", api_name="/click")
    with pytest.raises(Exception, match="rank must be a whole number, got '1.5'"):
        client.predict(PROMPT, "fisher", "", "", "rank", 1.5, api_name="/explain")
    with pytest.raises(Exception, match="pasted series must be numbers"):
        client.predict("1, x, 3", "temperature", api_name="/forecast")
    kind, data = _call(url, "explain", ["Hello \ud800 world", "temperature", "", "", "rank", 1, 24, 0])
    assert kind == "error" and "not valid Unicode" in json.dumps(data) and "Unexpected" not in json.dumps(data), data
    assert client.predict(PROMPT, 2, "temperature", api_name="/click")["position"] == 2


# ---- 9: the last click wins; no stale status line; pasting picks the pasted series ------------------


def test_the_last_click_wins_over_an_earlier_slower_one(default_model, tmp_path):
    """Old code: a slow click that ended after a later click replaced the later click's result."""
    blocks = build_app(default_model, downloads=tmp_path / "d")
    state = handler(blocks, "explain")(PROMPT, "temperature", "", "", "rank", 1, 24, 0, False, None,
                                       Session("c"), QUIET)[5]
    engine, explain = blocks.tjs_engine, blocks.tjs_engine.explain
    retire_request, click = handler(blocks, "retire_request"), handler(blocks, "click")

    def slow_first(*args, **kwargs):  # click 2 arrives while click 1 computes
        engine.explain = explain
        retire_request(Session("c"), SimpleNamespace(position=2, click=2))
        return explain(*args, **kwargs)

    engine.explain = slow_first
    retire_request(Session("c"), SimpleNamespace(position=1, click=1))
    first = click(state, False, SimpleNamespace(position=1, click=1), Session("c"), QUIET)
    assert all(o == {"__type__": "update"} for o in first), first[0]  # gr.skip(): nothing replaced
    second = click(state, False, SimpleNamespace(position=2, click=2), Session("c"), QUIET)
    assert "position 2" in second[0] and second[5]["position"] == 2
    # An older page script (no click number) still works.
    third = click(state, False, SimpleNamespace(position=3), Session("c"), QUIET)
    assert "position 3" in third[0]
    from tl_jacobian_scopes.app.render import CLICK_JS

    assert "click: window.tjsClicks" in CLICK_JS
    blocks.close()


def test_a_new_request_clears_the_status_line_and_pasting_picks_the_pasted_series(default_model, tmp_path):
    import gradio as gr

    blocks = build_app(default_model, downloads=tmp_path / "d")
    ready, source, pasted = (by_id(blocks, i)._id for i in ("tjs-ready", "tjs-ts-source", "tjs-ts-paste"))
    retires = [d for d in blocks.fns.values() if d.name == "retire"]
    assert len(retires) == 4 and all([o._id for o in d.outputs] == [ready] for d in retires)  # explain x2, compare, ts
    assert handler(blocks, "retire")(Session("r")) == ""
    (on_paste,) = [d for d in blocks.fns.values() if any(t[0] == pasted and t[1] == "input" for t in d.targets)]
    assert [o._id for o in on_paste.outputs] == [source] and on_paste.queue is False
    assert on_paste.fn("1, 2, 3")["value"] == "paste" and "paste" in [c[1] for c in by_id(blocks, "tjs-ts-source").choices]
    assert on_paste.fn("  ") == gr.skip()
    blocks.close()


# ---- 5, 11: python -m tl_jacobian_scopes.app serves; SIGTERM removes everything and exits 0 ----------


def test_python_m_app_serves_and_sigterm_cleans_up_like_ctrl_c(tmp_path):
    import httpx

    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "tl_jacobian_scopes.app", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        info = httpx.get(f"http://127.0.0.1:{port}/gradio_api/info").json()
        assert set(info["named_endpoints"]) == {"/explain", "/click", "/compare", "/forecast"}
        written = sorted(p.name for p in tmp_path.iterdir())
        assert len(written) == 1 and written[0].startswith("tjs-app-"), written  # one folder, the app's
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-2000:]
    assert "Traceback" not in output and list(tmp_path.iterdir()) == [], (list(tmp_path.iterdir()), output[-2000:])
