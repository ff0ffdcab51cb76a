"""The app's event handlers called directly, no browser: hostile input (session hashes, click
positions, series lengths), Stop that leaves the model as it was, and the files each tab offers.

(Hostile text in a real browser: test_app.py.)"""

import threading
import time
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")

from tl_jacobian_scopes.app import build_app  # noqa: E402
from tl_jacobian_scopes.app.engine import Engine, Request  # noqa: E402
from tl_jacobian_scopes.app.state import ModelSlot, Stopped  # noqa: E402
from tl_jacobian_scopes.models.access import all_modules, hook_count  # noqa: E402

from app_helpers import PROMPT, Session, handler  # noqa: E402

@pytest.fixture(scope="module")
def app_parts(default_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "a" / "downloads"
    blocks = build_app(default_model, downloads=folder)
    return blocks, root, folder


@pytest.mark.parametrize("session_hash", ["../../escaped", "/tmp/tjs-review14-absolute", "..", "a/../../b"])
def test_a_hostile_session_hash_cannot_write_outside_the_downloads_folder(app_parts, session_hash):
    """The session hash comes from the client (Gradio does not check it): a file path built
    from it must stay inside the app's downloads folder."""
    blocks, root, folder = app_parts
    state = {"request": Request(PROMPT, "temperature"), "position": 3, "runs": 1}
    paths, _ = handler(blocks, "files")(state, False, Session(session_hash))
    assert paths and all(str(p) for p in paths)
    for path in paths:
        resolved = folder.resolve()
        assert resolved in type(resolved)(path).resolve().parents, f"{path} is outside {folder}"


def test_a_non_numeric_click_position_is_a_message_not_a_crash(app_parts):
    blocks, _, _ = app_parts
    state = {"request": Request(PROMPT, "temperature"), "position": 3, "runs": 1}
    for position in ("abc", 1e400, [1]):
        out = handler(blocks, "click")(state, False, SimpleNamespace(position=position), Session("s"), None)
        assert "tjs-error" in out[0] or "Run an explanation" in out[0]


def test_stop_restores_train_mode_grad_flags_and_the_threads_grad_mode(default_model):
    """Stop (an exception from a progress update) mid exact-Fisher: every module's train/eval
    flag, every parameter's requires_grad, the worker thread's grad mode and the hooks are as before."""
    modules = all_modules(default_model)
    params = list(default_model.parameters())
    modes, flags = [m.training for m in modules], [p.requires_grad for p in params]
    modules[1].train()  # an unusual state the app must keep
    params[0].requires_grad_(not flags[0])
    try:
        before = ([m.training for m in modules], [p.requires_grad for p in params], hook_count(default_model))
        seen = {}

        def worker():
            torch.set_grad_enabled(False)  # a worker thread under no_grad, reused by the server
            stop = threading.Event()

            def progress(line):
                stop.set()

            try:
                Engine(ModelSlot(model=default_model)).result(Request(PROMPT, "fisher", fisher_mode="exact"),
                                                              stop=stop, progress=progress)
            except Stopped:
                seen["stopped"] = True
            seen["grad"] = torch.is_grad_enabled()

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen == {"stopped": True, "grad": False}
        after = ([m.training for m in modules], [p.requires_grad for p in params], hook_count(default_model))
        assert after == before
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def test_a_series_longer_than_the_context_is_refused_before_it_is_generated(app_parts, default_model, monkeypatch):
    """values=10**9 in the page must not integrate a billion-point Lorenz series (minutes of CPU,
    gigabytes, the model's queue blocked, Stop powerless) only for the context check to refuse it."""
    from tl_jacobian_scopes.models.access import ModelAccess
    from tl_jacobian_scopes.timeseries import FAMILIES

    blocks, _, _ = app_parts
    asked = []
    monkeypatch.setitem(FAMILIES, "lorenz", lambda n, seed: asked.append(n) or list(range(5)))
    too_many = ModelAccess(default_model).n_ctx + 1
    message, *_ = handler(blocks, "forecast")("lorenz", too_many, 0, "", "temperature", Session("s"),
                                                 lambda *a, **k: None)
    assert asked == [] and "tjs-error" in message and "context" in message


# ---- stop, files, retired jobs, series messages ----------------------------------------------------------


def test_stop_ends_the_background_precompute_even_after_a_click(default_model, tmp_path):
    """Explain, then click a token while every other position is being explained, then Stop:
    the background work must end too (a click must not leave it without a stop switch)."""
    from tl_jacobian_scopes.app.layout import build_blocks

    engine = Engine(ModelSlot(model=default_model))
    blocks = build_blocks(engine, tmp_path)
    request = Request("word " * 100, "temperature")
    n = engine.size(request)
    state = {"request": request, "position": n - 1, "runs": 1}
    session, quiet = Session("one-tab"), (lambda *a, **k: None)
    out = {}
    worker = threading.Thread(target=lambda: out.update(ready=handler(blocks, "precompute")(state, session, quiet)))
    worker.start()
    deadline = time.monotonic() + 120
    while engine.cached(request, n - 2) is None and time.monotonic() < deadline:  # the first chunk (nearest) is done
        time.sleep(0.05)
    clicked = handler(blocks, "click")(state, False, SimpleNamespace(position=1), session, quiet)
    assert "data-run" in clicked[0]
    handler(blocks, "stop_session")(session)
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert "Stopped" in out["ready"], out["ready"]
    assert sum(engine.cached(request, p) is not None for p in range(n)) < n


def test_the_time_series_tab_offers_the_library_files(app_parts):
    """PNG, HTML and JSON of the current time-series view, as the library writes them."""
    import json

    from tl_jacobian_scopes import load

    blocks, _, folder = app_parts
    message, _, image, files = handler(blocks, "forecast")("paste", 60, 0, "1, 2, 3, 4, 5, 6, 7, 8", "temperature",
                                                          Session("ts"), lambda *a, **k: None)
    assert "tjs-error" not in message, message
    by_suffix = {p.rsplit(".", 1)[-1]: p for p in files if not p.endswith("_tokens.json")}
    assert image == by_suffix["png"] and open(image, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "<html" in open(by_suffix["html"], encoding="utf-8").read().lower()
    values = json.loads(open(by_suffix["json"], encoding="utf-8").read())
    assert values["step"] == 8 and len(values["value_scores"]) == 8
    (tokens,) = [p for p in files if p.endswith("_tokens.json")]
    assert load(tokens).scope == "temperature"


def test_a_new_prompt_retires_the_old_prompts_background_job_only():
    """The old prompt's background job is stopped (and marked retired, so it says nothing);
    the session's new request and other sessions are untouched."""
    from tl_jacobian_scopes.app.state import StopSwitches

    stops = StopSwitches()
    old_job, request, other = stops.arm("s", "background"), stops.arm("s"), stops.arm("t", "background")
    stops.retire("s", "background")
    assert old_job.is_set() and getattr(old_job, "retired", False)
    assert not request.is_set() and not other.is_set()
    new_job = stops.arm("s", "background")
    assert not new_job.is_set() and not getattr(new_job, "retired", False)
    stops.retire("nobody", "background")  # nothing to retire: no error


@pytest.mark.parametrize("source, n, fragment", [("no-such-series", 60, "Unknown series"), ("lorenz", 0, "at least 3")])
def test_an_unknown_series_or_too_few_values_is_a_clear_message(app_parts, source, n, fragment):
    blocks, _, _ = app_parts
    message, *_ = handler(blocks, "forecast")(source, n, 0, "", "temperature", Session("s"), lambda *a, **k: None)
    assert "tjs-error" in message and fragment in message and "Unexpected" not in message
