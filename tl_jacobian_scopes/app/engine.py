"""The app's computations, free of Gradio: each call takes the page's inputs and returns
the library's results (raising the library's :class:`ScopeError` on bad input)."""

from __future__ import annotations

import argparse
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..cli import _scope_kwargs
from ..errors import OptionError, PromptError
from ..models.access import ModelAccess
from ..models.inputs import prepare_tokens
from ..progress import Progress, observe
from ..results.scope_result import ScopeResult
from ..scopes.api import resolve_scope
from ..scopes.engine import probe_chunk_cap
from .budget import Budget
from .state import ModelSlot, OverTime, ResultCache, Stopped

#: The scopes the app offers (baselines are for the faithfulness study, not this page).
APP_SCOPES = ("semantic", "temperature", "fisher")
FISHER_MODES = ("rank", "exact", "stochastic")


@dataclass(frozen=True)
class Request:
    """One explanation as the page asks for it; hashable, so it keys the cache.

    ``target``/``contrast`` (Semantic) apply to the prompt's last position; at any other
    position the top prediction there is explained.
    """

    prompt: str
    scope: str = "fisher"
    target: Optional[str] = None
    contrast: Optional[str] = None
    fisher_mode: str = "rank"
    rank: int = 1
    samples: int = 24
    seed: int = 0

    @property
    def full_trace(self) -> bool:
        """Fisher's exact trace or its stochastic estimate: hundreds of probes per position."""
        return self.scope == "fisher" and self.fisher_mode != "rank"

    def scope_kwargs(self) -> dict[str, Any]:
        """The scope's keyword arguments for all positions, checked as the command line checks them.

        Raises:
            PromptError: The prompt is empty.
            OptionError: An option does not apply or is out of range.
        """
        if not self.prompt or not self.prompt.strip():
            raise PromptError("The prompt is empty: type some text to explain its next-token prediction.")
        if self.scope not in APP_SCOPES:
            raise OptionError(f"scope must be one of {list(APP_SCOPES)}, got {self.scope!r}.")
        if self.fisher_mode not in FISHER_MODES:
            raise OptionError(f"Fisher mode must be one of {list(FISHER_MODES)}, got {self.fisher_mode!r}.")
        fisher = self.scope == "fisher"
        args = argparse.Namespace(
            internals=False, no_bos=False, position=None, positions="all",
            target=self.target if self.scope == "semantic" else None,
            contrast=self.contrast if self.scope == "semantic" else None,
            rank=self.rank if fisher and self.fisher_mode == "rank" else None,
            exact=fisher and self.fisher_mode == "exact",
            samples=self.samples if fisher and self.fisher_mode == "stochastic" else None,
            seed=self.seed if fisher and self.fisher_mode == "stochastic" else None,
        )
        kwargs = _scope_kwargs(args, self.scope)
        kwargs.pop("internals")
        return kwargs


class Engine:
    """The model, the caches and the computations behind the page, within a :class:`Budget`.

    Each request holds the model once (tokenizing, the scope call and the top predictions
    together); background work holds it one small step at a time and lets waiting requests go
    first (:meth:`ModelSlot.hold`).

    Examples:
        >>> engine = Engine(ModelSlot(model=model))
        >>> last = engine.result(Request("The capital of France is", "fisher"))
        >>> engine.precompute(Request("The capital of France is", "fisher"))  # clicks: lookups; returns positions done
        6
    """

    def __init__(self, slot: ModelSlot, cache_size: int = 32, budget: Optional[Budget] = None):
        self.slot = slot
        self.budget = budget or Budget()
        limit = self.budget.results_mb * 2**20
        self.rows = ResultCache(128 * cache_size, max_bytes=limit)  # per (request, position, internals)
        self.predictions = ResultCache(cache_size, max_bytes=limit / 16)
        self._active = 0  # computations running or waiting for the model (for the page and the tests)
        self._active_guard = threading.Lock()

    @property
    def active(self) -> int:
        """How many computations are running or waiting for the model now."""
        with self._active_guard:
            return self._active

    def _run(self, stop: Optional[threading.Event], progress: Optional[Callable[[Progress], None]],
             body: Callable[[Any], Any], background: bool = False) -> Any:
        """``body(model)`` holding the model once, reporting progress and honouring Stop and
        the budget's ``max_seconds`` (checked at each progress step, that is between two
        chunks of at most the budget's ``probe_chunk`` probes). A request that, past half its
        time, is on course for more than twice the limit stops then, rather than holding the
        model until the limit for nothing."""
        held = [float("inf")]
        limit = self.budget.max_seconds

        def update(line: Progress) -> None:
            if stop is not None and stop.is_set():
                raise Stopped()
            elapsed = time.monotonic() - held[0]
            done = float(line.done) / float(line.total) if line.total else None
            if elapsed > limit or (done and elapsed > limit / 2 and elapsed / done > 2 * limit):
                raise OverTime(self.budget.over_time(elapsed, done))
            if progress is not None:
                progress(line)

        if stop is not None and stop.is_set():
            raise Stopped()
        with self._active_guard:
            self._active += 1
        try:
            with self.slot.hold(background, stop) as model, observe(update), \
                    probe_chunk_cap(self.budget.probe_chunk):
                held[0] = time.monotonic()
                if stop is not None and stop.is_set():
                    raise Stopped()
                return body(model)
        finally:
            with self._active_guard:
                self._active -= 1

    def check(self, request: Request) -> dict[str, Any]:
        """Everything about ``request`` that needs no model (its options and the budget), before any model work.

        Raises:
            ScopeError: An option out of range or over the budget, or a prompt far too long.
        """
        kwargs = request.scope_kwargs()
        self.budget.check_options(request.rank, request.samples, request.full_trace, request.fisher_mode)
        self.budget.check_chars(request.prompt)
        return kwargs

    def n_tokens(self, model: Any, request: Request) -> int:
        """The prompt's length in tokens (BOS included), with the library's prompt checks and the budget's."""
        n = int(prepare_tokens(ModelAccess(model), request.prompt, prepend_bos=None).shape[-1])
        self.budget.check_tokens(n, request.full_trace, request.fisher_mode)
        return n

    def cached(self, request: Request, position: int, internals: bool = False) -> Optional[ScopeResult]:
        """The result at ``position`` if it was computed already (a click on a ready page)."""
        return self.rows.get((request, position, internals))  # type: ignore[no-any-return]

    def _compute(self, model: Any, request: Request, positions: list[int], n: int,
                 internals: bool) -> list[ScopeResult]:
        """One library call for ``positions`` (one of them: ``position=``; several: ``positions=``);
        the caller holds the model."""
        kwargs = request.scope_kwargs()
        kwargs.pop("positions")
        if request.scope == "semantic":  # the target given applies to the last position only
            targets = [(request.target, request.contrast) if p == n - 1 else (None, None) for p in positions]
            kwargs.update(target=[t for t, _ in targets], contrast=[c for _, c in targets])
            if len(positions) == 1:
                kwargs.update(target=targets[0][0], contrast=targets[0][1])
        if len(positions) == 1:
            kwargs["position"] = positions[0]
        else:
            kwargs["positions"] = positions
        out = resolve_scope(request.scope)(model, request.prompt, internals=internals, progress=False, **kwargs)
        results = [out] if isinstance(out, ScopeResult) else list(out)
        for p, r in zip(positions, results):
            self.rows.put((request, p, internals), r)
        return results

    def size(self, request: Request, stop: Optional[threading.Event] = None) -> int:
        """The prompt's length in tokens (BOS included), checking the request first."""
        self.check(request)
        return int(self._run(stop, None, lambda model: self.n_tokens(model, request)))

    def explain(self, request: Request, position: Optional[int] = None, internals: bool = False,
                stop: Optional[threading.Event] = None, progress: Optional[Callable[[Progress], None]] = None,
                predictions: int = 0) -> tuple[ScopeResult, list[tuple[str, float]]]:
        """The explanation at ``position`` (default: the last; computed once, then cached) and,
        with ``predictions=k``, the ``k`` most probable next tokens after the prompt: one hold
        of the model for both.

        Raises:
            ScopeError: Bad input (the library's message), over the budget, or ``position``
                outside the prompt.
        """
        self.check(request)

        def body(model: Any) -> tuple[ScopeResult, list[tuple[str, float]]]:
            n = self.n_tokens(model, request)
            pos = n - 1 if position is None else int(position)
            if not 0 <= pos < n:
                raise OptionError(f"position {pos} is outside the prompt's {n} tokens.")
            result = self.cached(request, pos, internals)
            if result is None:
                result = self._compute(model, request, [pos], n, internals)[0]
            top = self._top(model, request.prompt, predictions) if predictions else []
            return result, top

        return self._run(stop, progress, body)  # type: ignore[no-any-return]

    def result(self, request: Request, position: Optional[int] = None, internals: bool = False,
               stop: Optional[threading.Event] = None,
               progress: Optional[Callable[[Progress], None]] = None) -> ScopeResult:
        """The explanation at ``position`` (default: the last): :meth:`explain` without predictions."""
        return self.explain(request, position, internals, stop, progress)[0]

    def precompute(self, request: Request, stop: Optional[threading.Event] = None,
                   progress: Optional[Callable[[int, int], None]] = None, chunk: Optional[int] = None,
                   around: Optional[int] = None) -> int:
        """Explain the positions not explained yet, nearest ``around`` (default: the last) first
        and at most the budget's ``precompute`` of them, so that clicks are lookups. Each step
        of ``chunk`` positions (default: the budget's) holds the model as background work, so
        a waiting request goes first. Fisher's full-trace estimates (exact, stochastic) are
        left to clicks: they cost hundreds of probes per position. Returns the number of
        positions ready."""
        n = self.size(request, stop)
        if request.full_trace:
            return sum(self.cached(request, p) is not None for p in range(n))
        step = chunk or self.budget.chunk
        centre = n - 1 if around is None else around
        todo = sorted((p for p in range(n) if self.cached(request, p) is None), key=lambda p: (abs(p - centre), p))
        todo = todo[:self.budget.precompute]
        ready = n - len([p for p in range(n) if self.cached(request, p) is None])
        total = ready + len(todo)
        for start in range(0, len(todo), step):
            part = todo[start:start + step]
            self._run(stop, None, lambda model: self._compute(model, request, part, n, False), background=True)
            if progress is not None:
                progress(ready + min(start + step, len(todo)), total)
        return sum(self.cached(request, p) is not None for p in range(n))

    def _top(self, model: Any, prompt: str, k: int) -> list[tuple[str, float]]:
        cached = self.predictions.get((prompt, k))
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        access = ModelAccess(model)
        tokens = prepare_tokens(access, prompt, prepend_bos=None)
        with access.frozen(), torch.no_grad():
            logits = model(tokens)[0, -1].float()
        probs, ids = torch.topk(torch.softmax(logits, -1), k)
        top = [(access.token_str(int(i)), float(p)) for p, i in zip(probs, ids)]
        return self.predictions.put((prompt, k), top)  # type: ignore[no-any-return]

    def top_predictions(self, prompt: str, k: int = 8) -> list[tuple[str, float]]:
        """The ``k`` most probable next tokens after ``prompt`` (for the target choices).

        Raises:
            PromptError: The library's prompt checks (not valid text, too long), or over the budget.
        """
        if not prompt or not prompt.strip():
            return []
        self.budget.check_chars(prompt)

        def body(model: Any) -> list[tuple[str, float]]:
            self.n_tokens(model, Request(prompt, "temperature"))
            return self._top(model, prompt, k)

        return self._run(None, None, body)  # type: ignore[no-any-return]

    def forecast(self, series: Sequence[float], scope: str, digits: int = 2,
                 stop: Optional[threading.Event] = None,
                 progress: Optional[Callable[[Progress], None]] = None) -> Any:
        """The time-series scope of the value after ``series`` (value-level influence and the
        forecast distribution): :func:`tl_jacobian_scopes.timeseries.forecast_scope`, within
        the budget's series length (checked before any model work)."""
        from ..timeseries import forecast_scope

        self.budget.check_series(len(series))
        return self._run(stop, progress, lambda model: forecast_scope(model, list(series), scope, digits=digits,
                                                                        progress=False))


def pasted_series(text: str, limit: Optional[int] = None) -> list[float]:
    """Numbers pasted into the page, separated by commas, spaces or line breaks (at most ``limit``).

    Raises:
        PromptError: Something that is not a number, fewer than 3 values, or more than ``limit``.
    """
    if limit is not None and len(text) > 64 * limit:  # refused before splitting a huge paste
        raise PromptError(f"The pasted series has {len(text)} characters; this app forecasts series of up to "
                          f"{limit} values: paste fewer values.")
    items = [item for item in re.split(r"[,;\s]+", text.strip()) if item]
    if limit is not None and len(items) > limit:
        raise PromptError(f"The pasted series has {len(items)} values; this app forecasts series of up to "
                          f"{limit} values: paste fewer values.")
    values = []
    for i, item in enumerate(items):
        try:
            values.append(float(item))
        except ValueError:
            raise PromptError(f"The pasted series must be numbers separated by commas or spaces, but item {i} "
                              f"is {item[:20]!r}: fix it, or pick a generator.") from None
    if len(values) < 3:
        raise PromptError(f"The pasted series has {len(values)} values: paste at least 3 (e.g. 1.5, 2.1, 2.8).")
    return values


def write_downloads(result: ScopeResult, folder: Path, png: bool = True) -> list[Path]:
    """The current view as the library writes it: self-contained HTML, JSON, and PNG (when
    matplotlib is installed)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{result.scope}_scope_position{result.position}"
    paths = [result.save_html(folder / f"{stem}.html"), result.save_json(folder / f"{stem}.json")]
    if png:
        try:
            paths.append(result.save_png(folder / f"{stem}.png"))
        except ImportError:
            pass  # MissingPackageError: no matplotlib, the other two files still come
    return paths


def write_forecast_downloads(result: Any, view: Any, folder: Path) -> list[Path]:
    """A time-series view as the library writes it: the figure (PNG), the view (self-contained
    HTML), the value-level scores and forecast (JSON) and the token-level result (the library's
    result file)."""
    from ..results.files import dump_strict_json, write_output

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"forecast_{result.scope}_value{result.step}"
    png = write_output(folder / f"{stem}.png", lambda p: result.plot().savefig(p, dpi=100, format="png"))
    text = dump_strict_json(result.to_dict())
    values = write_output(folder / f"{stem}.json", lambda p: p.write_text(text, encoding="utf-8"))
    tokens = result.result.save_json(folder / f"{stem}_tokens.json")
    return [png, view.save(folder / f"{stem}.html"), values, tokens]
