"""The Gradio page: inputs, outputs and the events that call the :class:`Engine`."""

from __future__ import annotations

import atexit
import datetime
import hashlib
import html
import importlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional


from ..errors import OptionError, PromptError, ScopeError
from ..models.access import ModelAccess
from ..progress import Progress
from ..timeseries import FAMILIES
from .engine import (APP_SCOPES, FISHER_MODES, Engine, Request, pasted_series, write_downloads,
                     write_forecast_downloads)
from .render import (CLICK_JS, TOKEN_CSS, compare_html, frame_html, internals_html, message_html, none_if_blank,
                     summary_html, table_rows, token_html)
from .state import ClickOrder, OverTime, Sessions, Stopped, StopSwitches

#: Gradio, untyped here: its stubs vary between releases, and the app only wires its components.
gr: Any = importlib.import_module("gradio")
if TYPE_CHECKING:
    GrRequest = Any
    GrEvent = Any
else:  # Gradio passes these to a handler by its parameters' annotations
    GrRequest = gr.Request
    GrEvent = gr.EventData
log = logging.getLogger(__name__)

#: Every event that uses the model shares one queue of concurrency 1: requests wait their turn.
MODEL_QUEUE = "model"
EXAMPLE = "The capital of France is Paris, and the capital of Germany is"


def _failure(exc: BaseException) -> str:
    """The message the page shows for an error: the library's own for bad input, a one-line
    summary otherwise (the traceback goes to the server's log, never to the page)."""
    if isinstance(exc, OverTime):  # the app's limit, not the user's error: a notice, not a red alert
        return message_html(str(exc))
    if isinstance(exc, Stopped):
        return message_html("Stopped: the computation was cancelled; the model is unchanged.")
    if isinstance(exc, ScopeError):
        return message_html(str(exc), error=True)
    log.exception("unexpected error in the app")
    return message_html(f"Unexpected error ({type(exc).__name__}): {exc}", error=True)


def _progress_bridge(progress: Any) -> Callable[[Progress], None]:
    """The library's progress as one bar in the page, a fraction with its step counts spelt out
    (the library counts in fractions of a prediction, which reads badly as "0.5/1 prediction")."""
    def update(line: Progress) -> None:
        if line.total:
            share = min(1.0, max(0.0, float(line.done) / float(line.total)))
            progress(share, desc=f"{line.desc}: {share:.0%}")

    return update


def folder_size(folder: Path) -> int:
    """Bytes in the files under ``folder`` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def trim_folder(folder: Path, limit_bytes: float, keep: Optional[Path] = None) -> None:
    """Delete the oldest session folders under ``folder`` until it holds at most ``limit_bytes``
    (never ``keep``, the folder just written: the page is about to offer its files)."""
    subs = sorted((p for p in folder.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime) \
        if folder.exists() else []
    total = folder_size(folder)
    for sub in subs:
        if total <= limit_bytes:
            break
        size = folder_size(sub)
        shutil.rmtree(sub, ignore_errors=True)
        total -= size


def session_folder(folder: Path, session_hash: Optional[str]) -> Path:
    """The session's subfolder of ``folder``: named by a digest of Gradio's session hash, which
    the client sends unchecked (``../..`` or an absolute path must not leave ``folder``)."""
    return folder / hashlib.sha256((session_hash or "").encode("utf-8", "replace")).hexdigest()[:32]


def point_gradio_at(cache: Path) -> None:
    """Make ``cache`` Gradio's temporary folder for what it writes from now on (its file cache,
    the folder it serves files from, its own scratch folders), instead of the system's
    ``/tmp/gradio``, which nothing removes. Gradio reads ``GRADIO_TEMP_DIR`` on each use, but
    also keeps it in module constants read at import: both are set."""
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    for name in ("gradio.routes", "gradio.route_utils"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "DEFAULT_TEMP_DIR"):
            setattr(module, "DEFAULT_TEMP_DIR", str(cache))


def forget_gradio_session(blocks: Any, session: str) -> None:
    """Drop Gradio's own state for ``session`` (its ``gr.State`` values and its copy of the
    page's configuration): Gradio keeps a closed session's for an hour, and the session
    itself until 10,000 newer ones come."""
    holder = getattr(blocks, "state_holder", None)  # Gradio sets it at launch
    if holder is None:
        return
    with holder.lock:
        holder.session_data.pop(session, None)
        holder.time_last_used.pop(session, None)


def gradio_sessions(blocks: Any, idle_s: float) -> list[str]:
    """The sessions Gradio holds that are closed, or unused for ``idle_s`` seconds."""
    holder = getattr(blocks, "state_holder", None)
    if holder is None:
        return []
    now = datetime.datetime.now()
    with holder.lock:
        return [session for session, data in list(holder.session_data.items())
                if getattr(data, "is_closed", False)
                or (now - holder.time_last_used.get(session, now)).total_seconds() > idle_s]


SCOPE_HELP = {
    "semantic": "**Semantic**: how much each input token moves the logit of one *target* token (minus a "
                "*contrast*, if given). Ask it about a specific next word.",
    "temperature": "**Temperature**: how much each input token changes the *confidence* of the prediction "
                   "(the norm of the final hidden state, an inverse temperature), whatever the word.",
    "fisher": "**Fisher**: how much each input token changes the *whole next-token distribution* (the Fisher "
              "information of the prediction, pulled back to the input).",
}
MODE_HELP = {
    "rank": "*rank*: the top `rank` directions of the Fisher matrix (fast; rank 1 is usually enough).",
    "exact": "*exact*: the full trace, one backward pass per hidden dimension (slow; short prompts only).",
    "stochastic": "*stochastic*: an unbiased estimate of the trace from `samples` random probes, with "
                  "standard errors (`seed` makes it repeatable).",
}


def build_blocks(engine: Engine, downloads: Optional[Path] = None) -> Any:
    """The app's page around ``engine``; launch it with :func:`tl_jacobian_scopes.app.launch`.

    Every session's state and files are freed when its page closes (Gradio's unload, a few
    seconds after the connection drops) or after the budget's idle time; the downloads folder
    stays under the budget's size; at shutdown (``blocks.close()`` or exit) everything the app
    wrote is removed.

    Everything the app writes goes under one temporary folder (``blocks.tjs_root``): the
    downloads (unless ``downloads`` names a folder) and Gradio's file cache
    (``blocks.tjs_cache``, kept under the budget's ``cache_mb``).
    """
    budget = engine.budget
    owned = downloads is None
    root = Path(tempfile.mkdtemp(prefix="tjs-app-"))
    cache = root / "gradio"
    cache.mkdir()
    # The app's own downloads go straight into Gradio's cache, which then serves them without a copy.
    folder = Path(downloads) if downloads is not None else cache
    folder.mkdir(parents=True, exist_ok=True)
    stops = StopSwitches()
    sessions = Sessions()
    clicks = ClickOrder()
    blocks_ref: list[Any] = []  # the Blocks, once built (its state holder exists once launched)
    n_out = 7  # message, tokens, summary, top tokens, internals frame, state, target choices

    def session_of(request: GrRequest) -> str:
        session = request.session_hash or ""
        sessions.touch(session)
        return session

    def end_session(session: str) -> None:
        """Stop the session's work and free its files and its state (Gradio keeps a closed
        session's state for an hour, and the session itself until 10,000 newer ones)."""
        stops.end(session)
        sessions.forget(session)
        clicks.forget(session)
        shutil.rmtree(session_folder(folder, session), ignore_errors=True)
        if blocks_ref:
            forget_gradio_session(blocks_ref[0], session)

    def unload(request: GrRequest) -> None:
        end_session(request.session_hash or "")

    def reap(stop: threading.Event) -> None:
        while not stop.wait(min(30.0, budget.idle_s / 4)):
            for session in sessions.idle(budget.idle_s):
                end_session(session)
            if blocks_ref:  # sessions Gradio saw closed (or idle), those that reached no handler too
                for session in gradio_sessions(blocks_ref[0], budget.idle_s):
                    end_session(session)
            trim_folder(cache, budget.cache_mb * 2**20)

    def stop_all() -> None:
        """Stop every session's running work (at shutdown: the server then stops within a step)."""
        for session in list(stops.sessions()):
            stops.stop(session)

    def cleanup() -> None:
        """Remove everything the app wrote (the downloads folder if the app made it, else the sessions' folders)."""
        reaper_stop.set()
        for session in list(stops.sessions()):
            stops.end(session)
        shutil.rmtree(root, ignore_errors=True)  # Gradio's cache, and the downloads if the app made them
        if not owned and folder.exists():
            for sub in folder.iterdir():
                if sub.is_dir() and len(sub.name) == 32:
                    shutil.rmtree(sub, ignore_errors=True)

    reaper_stop = threading.Event()
    threading.Thread(target=reap, args=(reaper_stop,), name="tjs-app-idle-reaper", daemon=True).start()

    def request_of(prompt: str, scope: str, target: Optional[str], contrast: Optional[str], mode: str,
                   rank: Any, samples: Any, seed: Any) -> Request:
        def whole(value: Any, default: int, name: str) -> int:
            if value is None or value == "":
                return default
            try:
                number = float(value)
                if number != int(number):
                    raise ValueError
                return int(number)
            except (TypeError, ValueError, OverflowError):
                raise OptionError(f"{name} must be a whole number, got {str(value)[:40]!r}.") from None

        return Request(prompt or "", scope, none_if_blank(target), none_if_blank(contrast), mode,
                       whole(rank, 1, "rank"), whole(samples, 24, "samples"), whole(seed, 0, "seed"))

    def cleared(exc: BaseException) -> list[Any]:
        """A failure's message, and the previous results cleared (never left unmarked under it)."""
        return [_failure(exc), "", "", table_rows([], 3), "", None, gr.skip()]

    def show(req: Request, position: Optional[int], internals: bool, stop: Any, progress: Any,
             runs: int = 0, predictions: int = 0) -> tuple[list[Any], list[tuple[str, float]]]:
        result, top_next = engine.explain(req, position, internals, stop, _progress_bridge(progress), predictions)
        frame = internals_html(result) if internals else ""
        top = [[t.position, repr(t.token), round(t.score, 6)] for t in result.top(8)]
        done = message_html(f"Done: {req.scope} scope, {result.n_tokens} tokens, position {result.position}.",
                            run=runs + 1)
        return [done, token_html(result), summary_html(result), table_rows(top, 3), frame,
                {"request": req, "position": result.position, "runs": runs + 1}], top_next

    def retire(request: GrRequest) -> str:
        """A new request from a session ends that session's running work first (queue-free),
        and clears the status line of the work it replaces (never left stale over new results)."""
        session = session_of(request)
        stops.retire(session, "request")
        stops.retire(session, "background")
        return ""

    def retire_request(request: GrRequest, evt: GrEvent = None) -> None:
        """A click ends the session's running request first (queue-free), so that it does not wait
        behind it; the background job (explaining nearby positions of the same prompt) goes on.
        The click's number (the page counts its clicks) is noted: an earlier click still running
        can then tell that its result is no longer wanted."""
        session = session_of(request)
        clicks.note(session, getattr(evt, "click", None) if evt is not None else None)
        stops.retire(session, "request")

    def explain(prompt: str, scope: str, target: Optional[str], contrast: Optional[str], mode: str, rank: Any,
                samples: Any, seed: Any, internals: bool, state: Optional[dict[str, Any]], request: GrRequest,
                progress: Any = gr.Progress()) -> list[Any]:
        session = session_of(request)
        stop = stops.arm(session)
        stops.retire(session, "background")  # the previous prompt's background job
        try:
            req = request_of(prompt, scope, target, contrast, mode, rank, samples, seed)
            out, top_next = show(req, None, internals, stop, progress, (state or {}).get("runs", 0), predictions=8)
            choices = [(f"{tok!r} p={p:.3f}", tok) for tok, p in top_next]
            return out + [gr.update(choices=choices)]
        except Exception as exc:  # every failure becomes a message in the page
            return cleared(exc)

    def click(state: Optional[dict[str, Any]], internals: bool, evt: GrEvent, request: GrRequest,
              progress: Any = gr.Progress()) -> list[Any]:
        position = getattr(evt, "position", None) if evt is not None else None
        if not state or position is None:
            return [message_html("Run an explanation first, then click a token.")] + [gr.skip()] * (n_out - 1)
        try:  # the position comes from the page's script: a hostile client may send anything
            position = int(position)
        except (TypeError, ValueError, OverflowError):
            return [message_html(f"A click sent position {str(position)[:40]!r}, not a whole number.", error=True)
                    ] + [gr.skip()] * (n_out - 1)
        session = session_of(request)
        number = clicks.note(session, getattr(evt, "click", None))
        out = click_at(state, position, internals, request, progress)
        if clicks.superseded(session, number):  # a later click came meanwhile: its result is the one to show
            return [gr.skip()] * n_out
        return out

    def toggle_internals(state: Optional[dict[str, Any]], internals: bool, request: GrRequest,
                         progress: Any = gr.Progress()) -> list[Any]:
        if not state:
            return [gr.skip()] * n_out
        return click_at(state, state["position"], internals, request, progress)

    def click_at(state: dict[str, Any], position: int, internals: bool, request: GrRequest,
                 progress: Any) -> list[Any]:
        stop = stops.arm(session_of(request))
        try:
            return show(state["request"], position, internals, stop, progress, state["runs"])[0] + [gr.skip()]
        except Exception as exc:
            return [_failure(exc)] + [gr.skip()] * (n_out - 1)

    def tab_folder(session: str, tab: str) -> Path:
        """The session's folder for one tab's files, emptied: a session keeps only the files its
        page shows (one view and one forecast), so its disk use does not grow with its requests."""
        sub = session_folder(folder, session) / tab
        shutil.rmtree(sub, ignore_errors=True)
        return sub

    def write_files(paths: list[Path], sub: Path) -> list[str]:
        trim_folder(folder, budget.cache_mb * 2**20, keep=sub.parent)
        if folder != cache:  # Gradio copies them into its cache after the handler returns: room is made now
            trim_folder(cache, max(0.0, budget.cache_mb * 2**20 - sum(p.stat().st_size for p in paths if p.exists())))
        return [str(p) for p in paths if p.exists()]

    def files(state: Optional[dict[str, Any]], internals: bool, request: GrRequest) -> Any:
        if not state:
            return gr.skip(), message_html("Run an explanation first.")
        try:
            result = engine.result(state["request"], state["position"], internals)
            sub = tab_folder(session_of(request), "view")
            paths = write_files(write_downloads(result, sub), sub)
            return paths, message_html(f"Files for position {result.position} ready below.", run=state["runs"])
        except Exception as exc:
            return gr.skip(), _failure(exc)

    def compare_scopes(prompt: str, first: str, second: str, target: Optional[str], contrast: Optional[str],
                       mode: str, rank: Any, samples: Any, seed: Any, request: GrRequest,
                       progress: Any = gr.Progress()) -> Any:
        stop = stops.arm(session_of(request))
        try:
            results = [engine.result(request_of(prompt, s, target, contrast, mode, rank, samples, seed), None,
                                     False, stop, _progress_bridge(progress)) for s in (first, second)]
            return message_html(f"Done: {first} beside {second}."), compare_html(results)
        except Exception as exc:
            return _failure(exc), ""

    def series_of(source: str, n: Any, seed: Any, pasted: str) -> Any:
        if source == "paste":
            return pasted_series(pasted or "", budget.max_series)
        if source not in FAMILIES:
            raise OptionError(f"Unknown series {str(source)[:40]!r}: pick one of {', '.join(FAMILIES)}, or 'paste'.")
        generate: Any = FAMILIES[source]
        count, context = (60 if n is None else int(n)), ModelAccess(engine.slot.get()).n_ctx
        if count < 3:
            raise OptionError(f"values must be at least 3 (got {count}): ask for more values.")
        if count > context:  # refused before generating (a huge count would take minutes)
            raise PromptError(f"{count} values cannot fit in the model's context of {context} tokens "
                              "(each value takes at least one token): ask for fewer values.")
        budget.check_series(count)
        return generate(n=count, seed=int(seed or 0))

    def forecast(source: str, n: Any, seed: Any, pasted: str, scope: str, request: GrRequest,
                 progress: Any = gr.Progress()) -> Any:
        session = session_of(request)
        stop = stops.arm(session)
        try:
            series = series_of(source, n, seed, pasted)
            r = engine.forecast(series, scope, stop=stop, progress=_progress_bridge(progress))
            f = r.forecast
            text = (f"Forecast of value {r.step}: mean {f.mean:.4g} ± {f.std:.3g} (series units), mode {f.mode:.4g}."
                    if f is not None else "Done.")
            view = r.show()
            sub = tab_folder(session, "forecast")
            files = write_files(write_forecast_downloads(r, view, sub), sub)
            return message_html(text), frame_html(view, 260), files[0], files
        except Exception as exc:
            return _failure(exc), "", None, None

    def precompute(state: Optional[dict[str, Any]], request: GrRequest, progress: Any = None) -> Any:
        """After a result: explain up to the budget's number of positions nearest the explained
        one, so that clicks there are lookups (background work: any request goes first)."""
        if not state:
            return gr.skip()
        req = state["request"]
        switch = stops.arm(session_of(request), "background")
        try:
            ready = engine.precompute(req, switch, around=state.get("position"))
            if req.full_trace:
                return message_html(f"Fisher's {req.fisher_mode} estimate is computed per position: "
                                    "a click on a token computes that one (with progress; Stop cancels).")
            return (f'<div class="tjs-msg tjs-info" data-ready="{ready}">{ready} positions explained (the '
                    f"{budget.precompute} nearest the explained token at most): clicking one of them shows its "
                    "explanation at once.</div>")
        except Exception as exc:
            if getattr(switch, "retired", False):  # replaced by a newer job, or the session ended: say nothing
                return gr.skip()
            return _failure(exc)

    def stop_session(request: GrRequest) -> str:
        stops.stop(session_of(request))
        return message_html("Stopping… (the computation ends at its next step)")

    # ---- the scriptable API: the same engine, budget and queue; JSON in and out ----

    def _payload(result: Any) -> dict[str, Any]:
        return {"scope": result.scope, "position": result.position, "str_tokens": list(result.str_tokens),
                "scores": [float(x) for x in result.scores.tolist()], "predicted": result.predicted_str,
                "predicted_prob": result.predicted_prob, "target": result.target_str,
                "target_prob": result.target_prob}

    def _api_request(prompt: str, scope: str, target: str, contrast: str, fisher_mode: str, rank: float,
                     samples: float, seed: float) -> Request:
        return request_of(prompt, scope, target, contrast, fisher_mode, rank, samples, seed)

    def _api_call(request: GrRequest, work: Callable[[threading.Event], Any]) -> Any:
        """``work(stop)`` with every check inside: a bad value is the library's message to the
        client (``gr.Error``), never a traceback."""
        stop = stops.arm(session_of(request), "api")
        try:
            return work(stop)
        except ScopeError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Stopped as exc:
            raise gr.Error(str(exc) or "Stopped.", print_exception=False) from None
        except Exception as exc:  # the page's rule: a one-line summary, the traceback in the server's log
            log.exception("unexpected error in the app's API")
            raise gr.Error(f"Unexpected error ({type(exc).__name__}): {exc}", print_exception=False) from None

    def _api_position(position: Any) -> int:
        try:
            number = float(position)
            if number != int(number):
                raise ValueError
            return int(number)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(f"position must be a whole number (a token's index), got {str(position)[:40]!r}."
                              ) from None

    def api_explain(prompt: str, scope: str = "fisher", target: str = "", contrast: str = "",
                    fisher_mode: str = "rank", rank: float = 1, samples: float = 24, seed: float = 0,
                    request: GrRequest = None) -> dict[str, Any]:
        """Explain the prediction after the prompt's last token; returns the tokens and their scores
        (JSON). Bounded by the app's work budget (shown on the page)."""
        return _api_call(request, lambda stop: _payload(engine.result(  # type: ignore[no-any-return]
            _api_request(prompt, scope, target, contrast, fisher_mode, rank, samples, seed), None, False, stop)))

    def api_click(prompt: str, position: float, scope: str = "fisher", fisher_mode: str = "rank",
                  rank: float = 1, samples: float = 24, seed: float = 0,
                  request: GrRequest = None) -> dict[str, Any]:
        """Explain the top prediction at token ``position`` (as a click on that token does)."""
        return _api_call(request, lambda stop: _payload(engine.result(  # type: ignore[no-any-return]
            _api_request(prompt, scope, "", "", fisher_mode, rank, samples, seed), _api_position(position), False,
            stop)))

    def api_compare(prompt: str, first: str = "semantic", second: str = "fisher",
                    request: GrRequest = None) -> list[dict[str, Any]]:
        """Two scopes on the same prompt (the last position), each as api_explain returns it."""
        def work(stop: threading.Event) -> list[dict[str, Any]]:
            reqs = [_api_request(prompt, s, "", "", "rank", 1, 24, 0) for s in (first, second)]
            return [_payload(engine.result(r, None, False, stop)) for r in reqs]

        return _api_call(request, work)  # type: ignore[no-any-return]

    def api_forecast(series: str, scope: str = "temperature", request: GrRequest = None) -> dict[str, Any]:
        """Forecast the value after a series (numbers separated by commas or spaces) and explain it:
        the per-value influence and the forecast's mean, standard deviation and mode."""
        def work(stop: threading.Event) -> dict[str, Any]:
            values = pasted_series("" if series is None else str(series), budget.max_series)
            r = engine.forecast(values, scope, stop=stop)
            f = r.forecast
            return {"scope": r.scope, "step": r.step, "value_scores": [float(v) for v in r.value_scores],
                    "mean": None if f is None else f.mean, "std": None if f is None else f.std,
                    "mode": None if f is None else f.mode}

        return _api_call(request, work)  # type: ignore[no-any-return]

    point_gradio_at(cache)  # Blocks() itself writes a folder there
    with gr.Blocks(title="Jacobian Scopes", analytics_enabled=False,
                   delete_cache=(max(60, int(budget.idle_s // 4)), int(budget.idle_s))) as blocks:
        gr.HTML(f"<style>{TOKEN_CSS}</style><h2>Jacobian Scopes</h2><p>Model: <b>{html.escape(engine.slot.label)}"
                "</b> · which input tokens drive a prediction (arXiv 2601.16407)</p>", js_on_load=None)
        gr.HTML(f'<p class="tjs-budget">{html.escape(budget.describe())}</p>', elem_id="tjs-budget-line",
                js_on_load=None)
        state = gr.State(None, time_to_live=budget.idle_s)
        with gr.Tab("Explain"):
            prompt = gr.Textbox(label="Prompt", value=EXAMPLE, lines=3, elem_id="tjs-prompt",
                                max_length=budget.max_chars)
            with gr.Row():
                with gr.Column(scale=1):
                    scope = gr.Radio(list(APP_SCOPES), value="fisher", label="Scope", elem_id="tjs-scope")
                with gr.Column(scale=2):
                    scope_help = gr.Markdown(SCOPE_HELP["fisher"], elem_id="tjs-scope-help")
                internals = gr.Checkbox(label="Internals: layer × position and layer × head maps",
                                        elem_id="tjs-internals")
            with gr.Row(visible=False) as semantic_row:
                target = gr.Dropdown([], value="", label="Target (blank: top prediction; choices after a run)",
                                     allow_custom_value=True, elem_id="tjs-target")
                contrast = gr.Dropdown([], value="", label="Contrast (optional)", allow_custom_value=True,
                                       elem_id="tjs-contrast")
            with gr.Row(visible=True) as fisher_row:
                mode = gr.Radio(list(FISHER_MODES), value="rank", label="Fisher estimate", elem_id="tjs-mode")
                rank = gr.Number(1, precision=0, minimum=1, maximum=budget.max_rank, label="rank", elem_id="tjs-rank")
                samples = gr.Number(24, precision=0, minimum=1, maximum=budget.max_samples,
                                    label="samples (stochastic)", elem_id="tjs-samples", visible=False)
                seed = gr.Number(0, precision=0, minimum=0, label="seed (stochastic)", elem_id="tjs-seed",
                                 visible=False)
                mode_help = gr.Markdown(MODE_HELP["rank"], elem_id="tjs-mode-help")
            with gr.Row():
                run = gr.Button("Explain", variant="primary", elem_id="tjs-run")
                stop = gr.Button("Stop", variant="stop", elem_id="tjs-stop")
                prepare = gr.Button("Files for this view (HTML, PNG, JSON)", elem_id="tjs-files-button")
            message = gr.HTML("", elem_id="tjs-message", js_on_load=None)
            ready = gr.HTML("", elem_id="tjs-ready", js_on_load=None)
            tokens = gr.HTML("", elem_id="tjs-tokens", js_on_load=CLICK_JS)
            summary = gr.HTML("", elem_id="tjs-summary", js_on_load=None)
            top = gr.Dataframe(headers=["position", "token", "score"], label="Most influential tokens",
                               interactive=False, elem_id="tjs-top")
            frame = gr.HTML("", elem_id="tjs-frame", js_on_load=None)
            downloads = gr.Files(label="Downloads", elem_id="tjs-downloads", interactive=False)
        with gr.Tab("Compare"):
            gr.Markdown("Two scopes on the Explain tab's prompt and options, each on its own scale.")
            with gr.Row():
                first = gr.Radio(list(APP_SCOPES), value="semantic", label="Left", elem_id="tjs-first")
                second = gr.Radio(list(APP_SCOPES), value="fisher", label="Right", elem_id="tjs-second")
            compare_run = gr.Button("Compare", variant="primary", elem_id="tjs-compare-run")
            compare_message = gr.HTML("", elem_id="tjs-compare-message", js_on_load=None)
            compare_frame = gr.HTML("", elem_id="tjs-compare-frame", js_on_load=None)
        with gr.Tab("Time series"):
            with gr.Row():
                source = gr.Dropdown(["paste", *FAMILIES], value="lorenz", label="Series", elem_id="tjs-ts-source")
                length = gr.Number(60, precision=0, minimum=10, maximum=budget.max_series, label="values",
                                   elem_id="tjs-ts-n")
                ts_seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="tjs-ts-seed")
                ts_scope = gr.Radio(list(APP_SCOPES), value="temperature", label="Scope", elem_id="tjs-ts-scope")
            pasted = gr.Textbox(label=f"Pasted series (comma-separated numbers, up to {budget.max_series}; used when "
                                "Series is 'paste')", elem_id="tjs-ts-paste", max_length=32 * budget.max_series)
            ts_run = gr.Button("Forecast and explain", variant="primary", elem_id="tjs-ts-run")
            ts_message = gr.HTML("", elem_id="tjs-ts-message", js_on_load=None)
            ts_frame = gr.HTML("", elem_id="tjs-ts-frame", js_on_load=None)
            ts_plot = gr.Image(label="Influence over the series and the forecast distribution", type="filepath",
                               elem_id="tjs-ts-plot", buttons=["download", "fullscreen"],  # no "share" (uploads)
                               interactive=False)
            ts_downloads = gr.Files(label="Downloads (PNG, HTML, JSON)", elem_id="tjs-ts-downloads",
                                    interactive=False)

        private = dict(api_visibility="private", api_name="page")  # hidden, and never taking the API's names
        scope.change(lambda s: (gr.update(visible=s == "semantic"), gr.update(visible=s == "fisher"),
                                SCOPE_HELP.get(s, "")),
                     scope, [semantic_row, fisher_row, scope_help], queue=False, **private)
        mode.change(lambda m: (gr.update(visible=m == "rank"), gr.update(visible=m == "stochastic"),
                               gr.update(visible=m == "stochastic"), MODE_HELP.get(m, "")),
                    mode, [rank, samples, seed, mode_help], queue=False, **private)
        outputs = [message, tokens, summary, top, frame, state, target]
        queue = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1, **private)
        inputs = [prompt, scope, target, contrast, mode, rank, samples, seed]
        background = dict(concurrency_id=MODEL_QUEUE + "-background", concurrency_limit=1, show_progress="hidden",
                          **private)
        one_bar = dict(show_progress_on=[message], trigger_mode="always_last")
        explained = [trigger(retire, None, ready, queue=False, **private)
                     .then(explain, inputs + [internals, state], outputs, **queue, **one_bar)
                     for trigger in (run.click, prompt.submit)]
        for e in explained:
            e.success(precompute, state, ready, **background)
        tokens.click(retire_request, None, None, queue=False, **private)  # registered first: runs first
        tokens.click(click, [state, internals], outputs, **queue, **one_bar)
        internals.input(toggle_internals, [state, internals], outputs, **queue, **one_bar)
        compare_run.click(retire, None, ready, queue=False, **private).then(compare_scopes, [prompt, first, second] + inputs[2:], [compare_message, compare_frame],
                          **queue, show_progress_on=[compare_message], trigger_mode="always_last")
        ts_run.click(retire, None, ready, queue=False, **private).then(forecast, [source, length, ts_seed, pasted, ts_scope],
                     [ts_message, ts_frame, ts_plot, ts_downloads], **queue, show_progress_on=[ts_message],
            trigger_mode="always_last")
        prepare.click(files, [state, internals], [downloads, message], **queue)
        stop.click(stop_session, None, message, queue=False, **private)
        # Typing or pasting numbers means "use these": the source follows (no silent generator run).
        pasted.input(lambda text: gr.update(value="paste") if (text or "").strip() else gr.skip(), pasted, source,
                     queue=False, **private)
        blocks.unload(unload)
        api = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        gr.api(api_explain, api_name="explain", **api)
        gr.api(api_click, api_name="click", **api)
        gr.api(api_compare, api_name="compare", **api)
        gr.api(api_forecast, api_name="forecast", **api)
    original_close = blocks.close

    def close(*args: Any, **kwargs: Any) -> Any:
        try:
            return original_close(*args, **kwargs)
        finally:
            cleanup()

    blocks.close = close
    atexit.register(cleanup)
    blocks.tjs_engine = engine
    blocks.tjs_folder = folder
    blocks.tjs_sessions = sessions
    blocks.tjs_stops = stops
    blocks.tjs_cleanup = cleanup
    blocks.tjs_stop_all = stop_all
    blocks.tjs_root = root
    blocks.tjs_cache = cache
    blocks.tjs_clicks = clicks
    blocks_ref.append(blocks)
    # Gradio's file cache (files handed to the page) under the app's folder, not the system's /tmp/gradio.
    blocks.GRADIO_CACHE = str(cache)
    for block in blocks.blocks.values():
        block.GRADIO_CACHE = str(cache)
    return blocks
