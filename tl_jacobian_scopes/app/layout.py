"""The Gradio page: inputs, outputs and the events that call the :class:`Engine`."""

from __future__ import annotations

import hashlib
import html
import importlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional


from ..errors import OptionError, PromptError, ScopeError
from ..models.access import ModelAccess
from ..progress import Progress
from ..timeseries import FAMILIES
from ..views.html import compare
from .engine import (APP_SCOPES, FISHER_MODES, Engine, Request, pasted_series, write_downloads,
                     write_forecast_downloads)
from .render import (CLICK_JS, TOKEN_CSS, frame_html, message_html, none_if_blank, summary_html, table_rows,
                     token_html)
from .state import Stopped, StopSwitches

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
    if isinstance(exc, Stopped):
        return message_html("Stopped: the computation was cancelled; the model is unchanged.")
    if isinstance(exc, ScopeError):
        return message_html(str(exc), error=True)
    log.exception("unexpected error in the app")
    return message_html(f"Unexpected error ({type(exc).__name__}): {exc}", error=True)


def _progress_bridge(progress: Any) -> Callable[[Progress], None]:
    def update(line: Progress) -> None:
        if line.total:
            progress((line.done, line.total), desc=line.desc, unit=line.unit)

    return update


def session_folder(folder: Path, session_hash: Optional[str]) -> Path:
    """The session's subfolder of ``folder``: named by a digest of Gradio's session hash, which
    the client sends unchecked (``../..`` or an absolute path must not leave ``folder``)."""
    return folder / hashlib.sha256((session_hash or "").encode("utf-8", "replace")).hexdigest()[:32]


def build_blocks(engine: Engine, downloads: Optional[Path] = None) -> Any:
    """The app's page around ``engine``; launch it with :func:`tl_jacobian_scopes.app.launch`."""
    folder = Path(downloads or tempfile.mkdtemp(prefix="tjs-app-"))
    stops = StopSwitches()
    n_out = 7  # message, tokens, summary, top tokens, internals frame, state, target choices

    def request_of(prompt: str, scope: str, target: Optional[str], contrast: Optional[str], mode: str,
                   rank: Any, samples: Any, seed: Any) -> Request:
        def whole(value: Any, default: int) -> int:
            return default if value is None or value == "" else int(value)

        return Request(prompt or "", scope, none_if_blank(target), none_if_blank(contrast), mode,
                       whole(rank, 1), whole(samples, 24), whole(seed, 0))

    def show(req: Request, position: Optional[int], internals: bool, stop: Any, progress: Any,
             runs: int = 0) -> list[Any]:
        result = engine.result(req, position, internals, stop, _progress_bridge(progress))
        frame = frame_html(result.show("layers", "heads"), 900) if internals else ""
        top = [[t.position, repr(t.token), round(t.score, 6)] for t in result.top(8)]
        done = message_html(f"Done: {req.scope} scope, {result.n_tokens} tokens, position {result.position}.",
                            run=runs + 1)
        return [done, token_html(result), summary_html(result), table_rows(top, 3), frame,
                {"request": req, "position": result.position, "runs": runs + 1}]

    def explain(prompt: str, scope: str, target: Optional[str], contrast: Optional[str], mode: str, rank: Any,
                samples: Any, seed: Any, internals: bool, state: Optional[dict[str, Any]], request: GrRequest,
                progress: Any = gr.Progress()) -> list[Any]:
        stop = stops.arm(request.session_hash or "")
        # The previous prompt's background job would hold the model between its chunks.
        stops.retire(request.session_hash or "", "background")
        try:
            req = request_of(prompt, scope, target, contrast, mode, rank, samples, seed)
            out = show(req, None, internals, stop, progress, (state or {}).get("runs", 0))
            choices = [(f"{tok!r} p={p:.3f}", tok) for tok, p in engine.top_predictions(req.prompt)]
            return out + [gr.update(choices=choices)]
        except Exception as exc:  # every failure becomes a message in the page
            return [_failure(exc)] + [gr.skip()] * (n_out - 1)

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
        return click_at(state, position, internals, request, progress)

    def toggle_internals(state: Optional[dict[str, Any]], internals: bool, request: GrRequest,
                         progress: Any = gr.Progress()) -> list[Any]:
        if not state:
            return [gr.skip()] * n_out
        return click_at(state, state["position"], internals, request, progress)

    def click_at(state: dict[str, Any], position: int, internals: bool, request: GrRequest,
                 progress: Any) -> list[Any]:
        stop = stops.arm(request.session_hash or "")
        try:
            return show(state["request"], position, internals, stop, progress, state["runs"]) + [gr.skip()]
        except Exception as exc:
            return [_failure(exc)] + [gr.skip()] * (n_out - 1)

    def files(state: Optional[dict[str, Any]], internals: bool, request: GrRequest) -> Any:
        if not state:
            return gr.skip(), message_html("Run an explanation first.")
        try:
            result = engine.result(state["request"], state["position"], internals)
            sub = session_folder(folder, request.session_hash)
            paths = [str(p) for p in write_downloads(result, sub)]
            return paths, message_html(f"Files for position {result.position} ready below.", run=state["runs"])
        except Exception as exc:
            return gr.skip(), _failure(exc)

    def compare_scopes(prompt: str, first: str, second: str, target: Optional[str], contrast: Optional[str],
                       mode: str, rank: Any, samples: Any, seed: Any, request: GrRequest,
                       progress: Any = gr.Progress()) -> Any:
        stop = stops.arm(request.session_hash or "")
        try:
            results = [engine.result(request_of(prompt, s, target, contrast, mode, rank, samples, seed), None,
                                     False, stop, _progress_bridge(progress)) for s in (first, second)]
            return message_html(f"Done: {first} beside {second}."), frame_html(compare(*results), 700)
        except Exception as exc:
            return _failure(exc), gr.skip()

    def forecast(source: str, n: Any, seed: Any, pasted: str, scope: str, request: GrRequest,
                 progress: Any = gr.Progress()) -> Any:
        stop = stops.arm(request.session_hash or "")
        try:
            if source == "paste":
                series: Any = pasted_series(pasted or "")
            else:
                if source not in FAMILIES:
                    raise OptionError(f"Unknown series {str(source)[:40]!r}: pick one of {', '.join(FAMILIES)}, "
                                      "or 'paste'.")
                generate: Any = FAMILIES[source]
                count, context = (60 if n is None else int(n)), ModelAccess(engine.slot.get()).n_ctx
                if count < 3:
                    raise OptionError(f"values must be at least 3 (got {count}): ask for more values.")
                if count > context:  # refused before generating (a huge count would take minutes)
                    raise PromptError(f"{count} values cannot fit in the model's context of {context} tokens "
                                      "(each value takes at least one token): ask for fewer values.")
                series = generate(n=count, seed=int(seed or 0))
            r = engine.forecast(series, scope, stop=stop, progress=_progress_bridge(progress))
            f = r.forecast
            text = (f"Forecast of value {r.step}: mean {f.mean:.4g} ± {f.std:.3g} (series units), mode {f.mode:.4g}."
                    if f is not None else "Done.")
            view = r.show()
            files = write_forecast_downloads(r, view, session_folder(folder, request.session_hash))
            return message_html(text), frame_html(view, 260), str(files[0]), [str(p) for p in files]
        except Exception as exc:
            return _failure(exc), gr.skip(), gr.skip(), gr.skip()

    def precompute(state: Optional[dict[str, Any]], request: GrRequest, progress: Any = gr.Progress()) -> Any:
        """After a result: explain every other position too, so that clicks are lookups."""
        if not state:
            return gr.skip()
        req = state["request"]
        switch = stops.arm(request.session_hash or "", "background")
        try:
            def update(done: int, total: int) -> None:
                progress((done, total), desc="explaining every position", unit="positions")

            ready = engine.precompute(req, switch, update)
            if req.full_trace:
                return message_html(f"Fisher's {req.fisher_mode} estimate is computed per position: "
                                    "a click on a token computes that one (with progress; Stop cancels).")
            return (f'<div class="tjs-msg tjs-info" data-ready="{ready}">All {ready} positions explained: '
                    "clicking a token shows its explanation at once.</div>")
        except Exception as exc:
            if getattr(switch, "retired", False):  # replaced by a newer prompt's job: say nothing
                return gr.skip()
            return _failure(exc)

    def stop_session(request: GrRequest) -> str:
        stops.stop(request.session_hash or "")
        return message_html("Stopping…")

    with gr.Blocks(title="Jacobian Scopes", analytics_enabled=False) as blocks:
        gr.HTML(f"<style>{TOKEN_CSS}</style><h2>Jacobian Scopes</h2><p>Model: <b>{html.escape(engine.slot.label)}"
                "</b> · which input tokens drive a prediction (arXiv 2601.16407)</p>", js_on_load=None)
        state = gr.State(None)
        with gr.Tab("Explain"):
            prompt = gr.Textbox(label="Prompt", value=EXAMPLE, lines=3, elem_id="tjs-prompt")
            with gr.Row():
                scope = gr.Radio(list(APP_SCOPES), value="fisher", label="Scope", elem_id="tjs-scope")
                internals = gr.Checkbox(label="Internals: layer × position and layer × head maps",
                                        elem_id="tjs-internals")
            with gr.Row(visible=False) as semantic_row:
                target = gr.Dropdown([], value="", label="Target (blank: top prediction; choices after a run)",
                                     allow_custom_value=True, elem_id="tjs-target")
                contrast = gr.Dropdown([], value="", label="Contrast (optional)", allow_custom_value=True,
                                       elem_id="tjs-contrast")
            with gr.Row(visible=True) as fisher_row:
                mode = gr.Radio(list(FISHER_MODES), value="rank", label="Fisher estimate", elem_id="tjs-mode")
                rank = gr.Number(1, precision=0, minimum=1, label="rank", elem_id="tjs-rank")
                samples = gr.Number(24, precision=0, minimum=1, label="samples (stochastic)", elem_id="tjs-samples")
                seed = gr.Number(0, precision=0, minimum=0, label="seed (stochastic)", elem_id="tjs-seed")
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
            downloads = gr.Files(label="Downloads", elem_id="tjs-downloads")
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
                length = gr.Number(60, precision=0, minimum=10, label="values", elem_id="tjs-ts-n")
                ts_seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="tjs-ts-seed")
                ts_scope = gr.Radio(list(APP_SCOPES), value="temperature", label="Scope", elem_id="tjs-ts-scope")
            pasted = gr.Textbox(label="Pasted series (comma-separated numbers; used when Series is 'paste')",
                                elem_id="tjs-ts-paste")
            ts_run = gr.Button("Forecast and explain", variant="primary", elem_id="tjs-ts-run")
            ts_message = gr.HTML("", elem_id="tjs-ts-message", js_on_load=None)
            ts_frame = gr.HTML("", elem_id="tjs-ts-frame", js_on_load=None)
            ts_plot = gr.Image(label="Influence over the series and the forecast distribution", type="filepath",
                               elem_id="tjs-ts-plot", buttons=["download", "fullscreen"])  # no "share" (uploads)
            ts_downloads = gr.Files(label="Downloads (PNG, HTML, JSON)", elem_id="tjs-ts-downloads")

        scope.change(lambda s: (gr.update(visible=s == "semantic"), gr.update(visible=s == "fisher")),
                     scope, [semantic_row, fisher_row], queue=False)
        outputs = [message, tokens, summary, top, frame, state, target]
        queue = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        inputs = [prompt, scope, target, contrast, mode, rank, samples, seed]
        background = dict(concurrency_id=MODEL_QUEUE + "-background", concurrency_limit=1)
        explained = [run.click(explain, inputs + [internals, state], outputs, **queue),
                     prompt.submit(explain, inputs + [internals, state], outputs, **queue)]
        runs = [
            *explained,
            *[e.success(precompute, state, ready, **background) for e in explained],
            tokens.click(click, [state, internals], outputs, **queue),
            internals.input(toggle_internals, [state, internals], outputs, **queue),
            compare_run.click(compare_scopes, [prompt, first, second] + inputs[2:], [compare_message, compare_frame],
                              **queue),
            ts_run.click(forecast, [source, length, ts_seed, pasted, ts_scope], [ts_message, ts_frame, ts_plot, ts_downloads],
                         **queue),
        ]
        prepare.click(files, [state, internals], [downloads, message], **queue)
        stop.click(stop_session, None, message, cancels=runs, concurrency_id="stop", concurrency_limit=None)
    return blocks
