"""The interactive app (issue 14): its computations against the library, and the page itself
in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium, no download).

The browser tests skip without gradio, playwright or Chromium, unless TJS_BROWSER_REQUIRED=1
(CI), where a missing piece fails instead.
"""

import json
import socket
import threading
import time
from urllib.parse import urlparse

import pytest
import torch

import tl_jacobian_scopes as tjs
from browser import BROWSER_REQUIRED, CHROMIUM, HAVE_BROWSER, _free_port, needs_app_browser
from tl_jacobian_scopes.app.engine import Engine, Request, pasted_series, write_downloads
from tl_jacobian_scopes.app.render import token_html
from tl_jacobian_scopes.app.state import ModelSlot, Stopped
from tl_jacobian_scopes.models.access import hook_count, model_lock
from tl_jacobian_scopes.progress import Progress, observe

PROMPT = "The capital of France is"


def assert_scores_close(shown, expected, rel=1e-3):
    """Page scores (6 significant digits) against the library's, relative to the largest."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    shown = torch.as_tensor(shown, dtype=torch.float64)
    assert shown.shape == expected.shape
    assert float((shown - expected).abs().max()) <= rel * float(expected.abs().max())


# ---- the engine, without a browser ---------------------------------------------------------------------


def test_engine_rows_are_the_library_results(default_model):
    engine = Engine(ModelSlot(model=default_model))
    request = Request(PROMPT, "semantic", target=" Paris", contrast=" London")
    last = engine.result(request)
    direct = tjs.semantic_scope(default_model, PROMPT, target=" Paris", contrast=" London", progress=False)
    assert (last.target_str, last.contrast_str, last.position) == (" Paris", " London", direct.position)
    assert_scores_close(last.scores, direct.scores)
    # Another position explains the top prediction there, as a single call does.
    at2 = engine.result(request, position=2)
    assert_scores_close(at2.scores, tjs.semantic_scope(default_model, PROMPT, position=2, progress=False).scores)
    assert engine.result(request, position=2) is at2  # cached: a click is a lookup
    # Every position in a few positions= calls: the same rows as one call each.
    fisher = Request(PROMPT, "fisher")
    seen = []
    n = engine.precompute(fisher, progress=lambda done, total: seen.append((done, total)), chunk=4)
    assert n == direct.n_tokens and seen[-1] == (n, n) and len(seen) == 2
    for p in (1, n - 1):
        assert_scores_close(engine.cached(fisher, p).scores,
                            tjs.fisher_scope(default_model, PROMPT, position=p, progress=False).scores)
    with_internals = engine.result(request, internals=True)
    assert with_internals.has_internals and with_internals.target_str == " Paris"
    predictions = engine.top_predictions(PROMPT)
    assert predictions[0][0] == direct.predicted_str and predictions[0][1] == pytest.approx(direct.predicted_prob, rel=1e-3)


def test_engine_refuses_bad_input_with_the_library_messages(default_model):
    engine = Engine(ModelSlot(model=default_model))
    with pytest.raises(tjs.PromptError, match="empty"):
        engine.result(Request("   ", "fisher"))
    with pytest.raises(tjs.TargetError):
        engine.result(Request(PROMPT, "semantic", target=" Paris is lovely"))
    with pytest.raises(tjs.OptionError, match="rank must be at least 1"):
        engine.result(Request(PROMPT, "fisher", rank=0))
    with pytest.raises(tjs.PromptError):
        engine.result(Request("word " * 9000, "temperature"))
    with pytest.raises(tjs.PromptError, match="item 1"):
        pasted_series("1.5, x, 3")
    assert pasted_series("1.5 2\n3,4") == [1.5, 2.0, 3.0, 4.0]
    assert hook_count(default_model) == 0


def test_stop_ends_a_computation_and_leaves_the_model_as_it_was(default_model):
    engine = Engine(ModelSlot(model=default_model))
    stop = threading.Event()
    seen = []

    def progress(line):
        seen.append(line.done)
        stop.set()  # pressed during the first update

    grad_mode = torch.is_grad_enabled()
    with pytest.raises(Stopped):
        engine.result(Request(PROMPT, "fisher", fisher_mode="exact"), stop=stop, progress=progress)
    assert seen and hook_count(default_model) == 0 and torch.is_grad_enabled() == grad_mode
    assert engine.result(Request(PROMPT, "fisher")).n_tokens > 0  # and the next request works


def test_model_load_failure_is_a_message_and_is_retried():
    calls = []

    def loader(name, device=None):
        calls.append(name)
        raise tjs.ModelLoadError(f"Could not load model {name!r}: check the name.")

    slot = ModelSlot(name="no-such-model", loader=loader)
    for _ in range(2):
        with pytest.raises(tjs.ModelLoadError, match="no-such-model"):
            Engine(slot).result(Request(PROMPT))
    assert calls == ["no-such-model", "no-such-model"]


def test_progress_observer_sees_updates_and_can_stop():
    seen = []
    with observe(lambda line: seen.append((line.desc, line.done))):
        bar = Progress("demo", total=3, enabled=False)
        bar.advance(1)
        bar.advance(2)
    assert seen == [("demo", 1.0), ("demo", 3.0)]
    Progress("after", total=1, enabled=False).advance(1)  # outside the block: not observed
    assert len(seen) == 2


def test_token_html_escapes_and_carries_positions(default_model):
    result = tjs.temperature_scope(default_model, "<b>x</b> & <script>alert(1)</script>", progress=False)
    text = token_html(result)
    assert "<script>" not in text and "<b>" not in text and "&lt;" in text
    assert text.count("data-pos=") == result.n_tokens


def test_write_downloads_are_the_library_files(default_model, tmp_path):
    result = tjs.fisher_scope(default_model, PROMPT, progress=False)
    paths = write_downloads(result, tmp_path)
    assert {p.suffix for p in paths} >= {".html", ".json"}
    assert tjs.load(next(p for p in paths if p.suffix == ".json")) == result


def test_cli_app_binds_localhost_by_default(default_model, monkeypatch, capsys):
    pytest.importorskip("gradio")
    import tl_jacobian_scopes.app as app
    from tl_jacobian_scopes.cli import main

    launched = []
    monkeypatch.setattr(app, "launch", lambda blocks, host, port: launched.append((host, port)))
    assert main(["app"], model=default_model) == 0
    assert main(["app", "--host", "0.0.0.0", "--port", "8000"], model=default_model) == 0
    assert launched == [("127.0.0.1", 7860), ("0.0.0.0", 8000)]
    assert main(["app", "--port", "0"], model=default_model) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    assert main(["--scope", "temperature", "--", "app"], model=default_model) == 0  # the prompt "app"
    assert "'app'" in capsys.readouterr().out


# ---- the page in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(default_model, tmp_path_factory):
    """The app on the embedded model, with every outgoing connection of this process recorded:
    the server side must not call out either (no analytics, no version check)."""
    if not HAVE_BROWSER:
        assert not BROWSER_REQUIRED, "gradio, playwright and Chromium are required here (TJS_BROWSER_REQUIRED=1)"
        pytest.skip("needs gradio, playwright and Chromium")
    from tl_jacobian_scopes.app import build_app, launch

    contacted = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def record(method):
        def wrapper(sock, address):
            contacted.append(address)
            return method(sock, address)
        return wrapper

    socket.socket.connect, socket.socket.connect_ex = record(connect), record(connect_ex)
    try:
        blocks = build_app(default_model, downloads=tmp_path_factory.mktemp("downloads"))
        _, url, _ = launch(blocks, port=_free_port(), prevent_thread_lock=True, quiet=True)
        yield url
        blocks.close()
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    outside = [a for a in contacted if not (isinstance(a, tuple) and a[0] in ("127.0.0.1", "::1", "localhost"))
               and not isinstance(a, (str, bytes))]  # str/bytes: Unix sockets
    assert not outside, f"the app's server connected to {outside}"


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        b.tjs_hosts = set()  # every host any page of the module asked for
        yield b
        b.close()
    assert b.tjs_hosts <= {"127.0.0.1", "localhost"}, f"requests left the machine: {b.tjs_hosts}"


def _open(browser, url):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.on("request", lambda r: browser.tjs_hosts.add(urlparse(r.url).hostname or r.url.split(":")[0]))
    page.goto(url)
    page.wait_for_selector("#tjs-run")
    return page


def _shown(page):
    """The explained position, the prediction and the token scores the page shows."""
    position = int(page.get_attribute("#tjs-summary [data-position]", "data-position"))
    scores = [float(s.get_attribute("data-score")) for s in page.query_selector_all("#tjs-tokens [data-pos]")]
    return position, page.inner_text("#tjs-summary"), scores


def _runs(page):
    """How many results this page has shown (the message counts them)."""
    counter = page.query_selector("#tjs-message [data-run]")
    return int(counter.get_attribute("data-run")) if counter else 0


def _wait_for_result(page, before, timeout=60_000):
    page.wait_for_selector(f"#tjs-message [data-run='{before + 1}']", timeout=timeout)


def _explain(page, prompt, scope):
    page.fill("#tjs-prompt textarea", prompt)
    page.check(f"#tjs-scope input[value='{scope}']")
    before = _runs(page)
    page.click("#tjs-run")
    _wait_for_result(page, before)


def _wait_for_message(page, text, timeout=60_000):
    page.wait_for_function("t => document.querySelector('#tjs-message').innerText.toLowerCase().includes(t)",
                           arg=text.lower(), timeout=timeout)


@needs_app_browser
def test_each_scope_click_internals_and_download(server, browser, default_model, tmp_path):
    page = _open(browser, server)
    started = time.monotonic()
    for scope in ("fisher", "temperature", "semantic"):
        _explain(page, PROMPT, scope)
        expected = tjs.SCOPES[scope](default_model, PROMPT, progress=False)
        position, summary, scores = _shown(page)
        assert position == expected.position and repr(expected.predicted_str) in summary
        assert f"p={expected.predicted_prob:.3f}" in summary
        assert_scores_close(scores, expected.scores)
    # Semantic with a target picked by typing it (the choices offer the top predictions).
    page.click("#tjs-target input")
    assert page.locator("[role='option']").filter(has_text="' Paris'").count() == 1
    page.keyboard.press("Escape")
    page.fill("#tjs-target input", " Paris")
    page.fill("#tjs-contrast input", " London")
    page.keyboard.press("Enter")
    _explain(page, PROMPT, "semantic")
    expected = tjs.semantic_scope(default_model, PROMPT, target=" Paris", contrast=" London", progress=False)
    position, summary, scores = _shown(page)
    assert "' Paris'" in summary and "' London'" in summary
    assert_scores_close(scores, expected.scores)
    # A click explains the prediction at that token (the top one there).
    before = _runs(page)
    page.click("#tjs-tokens [data-pos='3']")
    _wait_for_result(page, before)
    assert _shown(page)[0] == 3
    at3 = tjs.semantic_scope(default_model, PROMPT, position=3, progress=False)
    assert_scores_close(_shown(page)[2], at3.scores)
    assert repr(at3.predicted_str) in _shown(page)[1]
    # Internals: layer × position and layer × head maps, in the page itself (no frame), drawn at once
    # without being scrolled into view, and sized to their content (no scroll bar of their own).
    page.check("#tjs-internals input")
    tables = page.locator("#tjs-frame table.tjs-hm")
    tables.nth(1).wait_for(timeout=60_000)
    n_layers = default_model.cfg.n_layers
    assert tables.first.locator("tbody tr").count() == n_layers + 1
    assert tables.nth(1).locator("tbody tr").count() == n_layers
    assert page.locator("#tjs-frame iframe").count() == 0
    assert tables.first.bounding_box()["height"] > 10 * n_layers  # laid out (drawn), wherever the page is scrolled
    assert page.evaluate("""() => [...document.querySelectorAll('#tjs-frame, #tjs-frame *')].every(
        e => e.scrollHeight <= e.clientHeight + 1 || getComputedStyle(e).overflowY === 'visible')""")
    # Downloads: the view at position 3 as the library writes it.
    page.click("#tjs-files-button")
    link = page.locator("#tjs-downloads a[download$='.html']")
    link.wait_for(timeout=60_000)
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "view.html"
    download.value.save_as(saved)
    text = saved.read_text()
    assert "Layer × position" in text and "var CircuitsVis" in text and "http://" not in text.split("<script>")[0]
    json_link = page.locator("#tjs-downloads a[download$='.json']")
    with page.expect_download() as download:
        json_link.click()
    download.value.save_as(tmp_path / "view.json")
    loaded = tjs.load(tmp_path / "view.json")
    assert loaded.position == 3 and loaded.has_internals
    assert_scores_close(loaded.scores, at3.scores)
    assert time.monotonic() - started < 60


@needs_app_browser
def test_bad_input_shows_its_message_and_the_next_request_works(server, browser, default_model):
    page = _open(browser, server)
    for prompt, scope, target, message in (
        ("", "fisher", "", "The prompt is empty"),
        (PROMPT, "semantic", " Paris is lovely", "single token"),
        ("word " * 9000, "temperature", "", "up to 256 tokens"),
    ):
        page.fill("#tjs-prompt textarea", prompt)
        page.check(f"#tjs-scope input[value='{scope}']")
        if scope == "semantic":
            page.fill("#tjs-target input", target)
            page.keyboard.press("Enter")
        page.click("#tjs-run")
        _wait_for_message(page, message)
        assert page.query_selector("#tjs-message .tjs-error") and "Traceback" not in page.inner_text("#tjs-message")
    _explain(page, PROMPT, "fisher")  # the semantic target left in its field does not apply to Fisher
    assert_scores_close(_shown(page)[2], tjs.fisher_scope(default_model, PROMPT, progress=False).scores)


@needs_app_browser
def test_two_sessions_get_their_own_results(server, browser, default_model):
    first, second = _open(browser, server), _open(browser, server)
    prompts = {"fisher": "One, two, three, four,", "temperature": "The cat sat on the mat because it was"}
    for page, (scope, prompt) in zip((first, second), prompts.items()):
        page.fill("#tjs-prompt textarea", prompt)
        page.check(f"#tjs-scope input[value='{scope}']")
    first.click("#tjs-run")
    second.click("#tjs-run")  # queued behind the first: one model, one request at a time
    for page, (scope, prompt) in zip((first, second), prompts.items()):
        _wait_for_result(page, 0)
        expected = tjs.SCOPES[scope](default_model, prompt, progress=False)
        position, summary, scores = _shown(page)
        assert summary.startswith(scope) and position == expected.position
        assert_scores_close(scores, expected.scores)


@needs_app_browser
def test_compare_and_time_series_tabs(server, browser, default_model):
    page = _open(browser, server)
    page.get_by_role("tab", name="Compare").click()
    page.click("#tjs-compare-run")
    page.locator("#tjs-compare-frame .tjs-compare-row").nth(1).wait_for(timeout=60_000)
    assert page.locator("#tjs-compare-frame input").count() == 0  # no raw bound controls
    page.get_by_role("tab", name="Time series").click()
    page.fill("#tjs-ts-n input", "12")
    page.click("#tjs-ts-run")
    page.wait_for_selector("#tjs-ts-message .tjs-msg", timeout=60_000)
    text = page.inner_text("#tjs-ts-message")
    from tl_jacobian_scopes import timeseries as ts

    expected = ts.forecast_scope(default_model, ts.lorenz(n=12, seed=0), "temperature", progress=False)
    assert f"mean {expected.forecast.mean:.4g}" in text
    page.wait_for_selector("#tjs-ts-plot img", timeout=30_000)


@needs_app_browser
def test_queue_progress_and_stop(server, browser, default_model):
    """Exact Fisher (hundreds of probes) shows progress; a second tab waits in the queue; Stop ends
    the computation, and the queued request runs next, on an unchanged model."""
    page, other = _open(browser, server), _open(browser, server)
    page.fill("#tjs-prompt textarea", PROMPT)
    page.check("#tjs-scope input[value='fisher']")
    page.check("#tjs-mode input[value='exact']")
    page.click("#tjs-run")
    page.wait_for_function("() => /Fisher Scope: /.test(document.body.innerText)", timeout=30_000)  # gr.Progress
    other.fill("#tjs-prompt textarea", "One, two, three,")
    other.check("#tjs-scope input[value='temperature']")
    other.click("#tjs-run")
    other.wait_for_function("() => /queue/i.test(document.body.innerText)", timeout=10_000)
    started = time.monotonic()
    page.click("#tjs-stop")
    _wait_for_result(other, 0, timeout=30_000)  # an exact trace left running would take far longer
    assert time.monotonic() - started < 30
    expected = tjs.temperature_scope(default_model, "One, two, three,", progress=False)
    assert_scores_close(_shown(other)[2], expected.scores)
    with model_lock(default_model):  # between scope calls: the app's background job may be mid-call
        assert hook_count(default_model) == 0
    page.check("#tjs-mode input[value='rank']")
    _explain(page, PROMPT, "fisher")  # the stopped tab works again
    assert_scores_close(_shown(page)[2], tjs.fisher_scope(default_model, PROMPT, progress=False).scores)


@needs_app_browser
def test_model_load_failure_is_shown_in_the_page(browser):
    from tl_jacobian_scopes.app import build_app, launch

    calls = []

    def loader(name, device=None):
        calls.append(name)
        raise tjs.ModelLoadError(f"Could not load model {name!r}: check that it is a TransformerLens model name.")

    blocks = build_app(model_name="no-such-model", loader=loader)
    _, url, _ = launch(blocks, port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        page = _open(browser, url)
        for attempt in (1, 2):  # the page keeps working: every request retries and says what to fix
            page.click("#tjs-run")
            _wait_for_message(page, "could not load model 'no-such-model'")
            deadline = time.monotonic() + 20
            while len(calls) < attempt + 1 and time.monotonic() < deadline:  # + the start-up preload
                time.sleep(0.1)
            assert len(calls) == attempt + 1
        assert page.query_selector("#tjs-message .tjs-error") and "Traceback" not in page.inner_text("#tjs-message")
    finally:
        blocks.close()


# ---- hostile text in a real browser --------------------------------------------------------------


HOSTILE = ('</textarea><img src=x onerror="window.__pwned=1">${window.__pwned=2}'
           "{{constructor.constructor('window.__pwned=3')()}}<script>window.__pwned=4</script> é 😀 \"'")


@needs_app_browser
def test_hostile_prompt_target_and_series_are_shown_as_text(server, browser):  # noqa: F811
    page = _open(browser, server)
    page.fill("#tjs-prompt textarea", HOSTILE)
    page.check("#tjs-scope input[value='temperature']")
    page.click("#tjs-run")
    page.wait_for_selector("#tjs-tokens [data-pos]", timeout=60_000)
    shown = page.inner_text("#tjs-tokens")
    assert "<img src=x" in shown and "${window.__pwned=2}" in shown.replace("\u21b5", "")
    assert "{{constructor" in shown and "é" in shown  # (an emoji split over byte tokens shows as two U+FFFD)
    page.check("#tjs-scope input[value='semantic']")
    page.fill("#tjs-target input", "<script>window.__pwned=5</script>${1+1}{{x}}")
    page.keyboard.press("Enter")
    page.click("#tjs-run")
    page.wait_for_selector("#tjs-message .tjs-error", timeout=60_000)
    message = page.inner_text("#tjs-message")
    assert "<script>window.__pwned=5</script>" in message and "${1+1}{{x}}" in message
    page.get_by_role("tab", name="Time series").click()
    page.fill("#tjs-ts-paste textarea", "1, 2, <img src=x onerror=window.__pwned=6>")
    page.click("#tjs-ts-source input")
    page.locator("[role='option']").filter(has_text="paste").first.click()
    page.click("#tjs-ts-run")
    page.wait_for_selector("#tjs-ts-message .tjs-error", timeout=60_000)
    assert "item 2 is '<img'" in page.inner_text("#tjs-ts-message")
    assert page.evaluate("() => window.__pwned") is None
    assert page.query_selector("#tjs-tokens img, #tjs-message img, #tjs-ts-message img, "
                               "#tjs-tokens script, #tjs-message script") is None
