"""An interactive web app (Gradio, offline): type a prompt, pick a scope, see the tokens
coloured by influence; click a token to explain the prediction there; internals, a
side-by-side comparison, time series, downloads. ``pip install "tl_jacobian_scopes[app]"``.

Run it with ``tl-jacobian-scopes app`` (binds 127.0.0.1:7860), or from Python:

Examples:
    >>> from tl_jacobian_scopes.app import build_app, launch
    >>> demo = build_app(model)  # an already loaded model, or model_name=...
    >>> launch(demo)  # starts a web server and blocks  # doctest: +SKIP

Privacy: Gradio's analytics and the hub's telemetry are switched off (unless the user's
environment already decides), the theme uses the system's fonts (no font CDN), and the
views inline their JavaScript: the page makes no request beyond the app's own server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Optional

# Before gradio is imported anywhere: no usage reports, no version checks, no hub telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A closed page ends its session's work within a few seconds (Gradio's default heartbeat: 15 s).
os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", "2")

from ..errors import MissingPackageError  # noqa: E402

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


def _gradio() -> Any:
    try:
        import gradio
    except ImportError as exc:
        raise MissingPackageError('The app needs Gradio: pip install "tl_jacobian_scopes[app]"') from exc
    return gradio


def build_app(model: Any = None, model_name: Optional[str] = None, device: Optional[str] = None,
              downloads: Optional[Path] = None, loader: Optional[Callable[..., Any]] = None,
              budget: Any = None) -> Any:
    """The app's ``gradio.Blocks``, around an already loaded ``model`` or one loaded by name on
    the first request (a load failure is shown in the page, and retried on the next request).

    Args:
        model: A loaded TransformerLens model (then ``model_name`` and ``device`` are ignored).
        model_name: A TransformerLens model name (default: the embedded SmolLM2-135M-Instruct).
        device: Where to load it (default: cuda when available).
        downloads: Folder for the files the page offers (default: a new temporary folder).
        loader: ``loader(name, device=...)`` loads the model (default: :func:`load_model`);
            it starts at once in the background, and the first request waits for it.
        budget: The work budget per request (:class:`~tl_jacobian_scopes.app.budget.Budget`;
            default ``Budget()``), shown in the page.

    Raises:
        MissingPackageError: Gradio is not installed.
    """
    _gradio()
    from .engine import Engine
    from .layout import build_blocks
    from .state import ModelSlot

    slot = ModelSlot(model, model_name, device, loader)
    slot.preload()
    return build_blocks(Engine(slot, budget=budget), downloads)


def theme() -> Any:
    """Gradio's default look with the system's fonts (the stock theme fetches Google Fonts)."""
    gr = _gradio()
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


#: The endpoints a client may call by name (``gradio_client``); the page's own handlers are private.
API_NAMES = ("explain", "click", "compare", "forecast")
_BY_NAME = re.compile(r"/gradio_api/(?:run|api|call/v2|call)/([^/]+)/?$")


class GuardRoutes:
    """ASGI middleware in front of Gradio's routes: ``/gradio_api/upload`` answers 413 before
    reading the body (the app has no upload component, so no upload of any size is taken, nor
    written to disk), and a call by name (``/gradio_api/call/NAME`` and its older forms) to any
    name but :data:`API_NAMES` answers 404 (the page's handlers are reached by the page only,
    by number: ``/gradio_api/queue/join`` and ``/gradio_api/run/predict``)."""

    def __init__(self, app: Any, names: tuple[str, ...] = API_NAMES) -> None:
        self.app = app
        self.names = set(names)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST":
            path = str(scope.get("path", ""))
            named = _BY_NAME.search(path)
            if path.rstrip("/").endswith("/gradio_api/upload"):
                return await _refuse(send, 413, "This app takes no uploads.")
            # "predict": the route the page itself posts its queue-free events to (by number, not name).
            if named and named.group(1) not in self.names and named.group(0) != "/gradio_api/run/predict":
                return await _refuse(send, 404, f"No endpoint {named.group(1)!r}: this app's API is "
                                                f"{', '.join('/' + n for n in sorted(self.names))}.")
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def launch(blocks: Any, host: str = DEFAULT_HOST, port: Optional[int] = DEFAULT_PORT, **kwargs: Any) -> Any:
    """Serve ``blocks`` on ``host:port`` (127.0.0.1 by default: this machine only), queued,
    with no share link, no server-side rendering, no MCP server and no uploads (the page has
    no upload component: ``/gradio_api/upload`` answers 413) and no calls by name but
    :data:`API_NAMES` (:class:`GuardRoutes`). Gradio's file cache is the app's
    own folder. When the server stops (Ctrl-C, SIGTERM, or closed), everything the app wrote
    is removed; SIGTERM stops it as Ctrl-C does."""
    from starlette.middleware import Middleware

    cache = getattr(blocks, "tjs_cache", None)
    if cache is not None:  # files Gradio serves must be in the folder it calls its upload folder
        from .layout import point_gradio_at

        point_gradio_at(cache)
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(GuardRoutes)]
    options: dict[str, Any] = dict(server_name=host, server_port=port, share=False, ssr_mode=False,
                                   mcp_server=False, theme=theme(), footer_links=[], show_error=False,
                                   max_file_size=0, app_kwargs=app_kwargs)
    options.update(kwargs)
    blocking = not options.get("prevent_thread_lock")
    previous = None
    if blocking and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupter(blocks))  # like Ctrl-C: the cleanup below runs
    try:
        return blocks.queue(default_concurrency_limit=1).launch(**options)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        cleanup = getattr(blocks, "tjs_cleanup", None)
        if cleanup is not None and blocking:
            cleanup()  # the server has stopped (Ctrl-C, SIGTERM, or closed)


def _interrupter(blocks: Any) -> Callable[[int, Any], None]:
    """A SIGTERM handler: stop every session's work (so that the server's shutdown, which waits
    for running requests, takes a step, not a request) and remove the app's files at once (a
    service manager may kill the process if Gradio's shutdown, up to 5 s for open connections,
    runs past its grace period), then stop as Ctrl-C does."""
    def interrupt(signum: int, frame: Any) -> None:
        for name in ("tjs_stop_all", "tjs_cleanup"):
            step = getattr(blocks, name, None)
            if step is not None:
                step()
        raise KeyboardInterrupt()

    return interrupt


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "build_app", "launch", "theme"]
