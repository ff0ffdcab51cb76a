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
from ..progress import Progress, observe
from ..results.scope_result import ScopeResult
from ..scopes.api import resolve_scope
from .state import ModelSlot, ResultCache, Stopped

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
    """The model, the caches and the computations behind the page.

    Examples:
        >>> engine = Engine(ModelSlot(model=model))
        >>> last = engine.result(Request("The capital of France is", "fisher"))
        >>> engine.precompute(Request("The capital of France is", "fisher"))  # clicks: lookups; returns positions done
        6
    """

    def __init__(self, slot: ModelSlot, cache_size: int = 32):
        self.slot = slot
        self.rows = ResultCache(128 * cache_size)  # per (request, position, internals)
        self.predictions = ResultCache(cache_size)

    def _run(self, stop: Optional[threading.Event], progress: Optional[Callable[[Progress], None]],
             body: Callable[[Any], Any]) -> Any:
        """``body(model)`` under the model's lock, reporting progress and honouring Stop."""
        def update(line: Progress) -> None:
            if stop is not None and stop.is_set():
                raise Stopped()
            if progress is not None:
                progress(line)

        model = self.slot.get()
        with self.slot.lock(), observe(update):
            if stop is not None and stop.is_set():
                raise Stopped()
            return body(model)

    def n_tokens(self, model: Any, prompt: str) -> int:
        return int(ModelAccess(model).to_tokens(prompt, prepend_bos=None).shape[-1])

    def cached(self, request: Request, position: int, internals: bool = False) -> Optional[ScopeResult]:
        """The result at ``position`` if it was computed already (a click on a ready page)."""
        return self.rows.get((request, position, internals))  # type: ignore[no-any-return]

    def _call(self, request: Request, positions: list[int], n: int, internals: bool,
              stop: Optional[threading.Event], progress: Optional[Callable[[Progress], None]]) -> list[ScopeResult]:
        """One library call for ``positions`` (one of them: ``position=``; several: ``positions=``)."""
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

        def body(model: Any) -> list[ScopeResult]:
            out = resolve_scope(request.scope)(model, request.prompt, internals=internals, progress=False, **kwargs)
            return [out] if isinstance(out, ScopeResult) else list(out)

        results: list[ScopeResult] = self._run(stop, progress, body)
        for p, r in zip(positions, results):
            self.rows.put((request, p, internals), r)
        return results

    def size(self, request: Request, stop: Optional[threading.Event] = None) -> int:
        """The prompt's length in tokens (BOS included), checking the request first."""
        request.scope_kwargs()
        return int(self._run(stop, None, lambda model: self.n_tokens(model, request.prompt)))

    def result(self, request: Request, position: Optional[int] = None, internals: bool = False,
               stop: Optional[threading.Event] = None,
               progress: Optional[Callable[[Progress], None]] = None) -> ScopeResult:
        """The explanation at ``position`` (default: the last): computed once, then cached.

        Raises:
            ScopeError: Bad input (the library's message), or ``position`` outside the prompt.
        """
        n = self.size(request, stop)
        pos = n - 1 if position is None else int(position)
        if not 0 <= pos < n:
            raise OptionError(f"position {pos} is outside the prompt's {n} tokens.")
        cached = self.cached(request, pos, internals)
        if cached is not None:
            return cached
        return self._call(request, [pos], n, internals, stop, progress)[0]

    def precompute(self, request: Request, stop: Optional[threading.Event] = None,
                   progress: Optional[Callable[[int, int], None]] = None, chunk: int = 16) -> int:
        """Explain every position not explained yet (``positions=`` calls of ``chunk``
        positions, so a click waits at most one chunk for the model), so that clicks are
        lookups. Fisher's full-trace estimates (exact, stochastic) are left to clicks: they
        cost hundreds of probes per position. Returns the number of positions ready."""
        n = self.size(request, stop)
        if request.full_trace:
            return sum(self.cached(request, p) is not None for p in range(n))
        todo = [p for p in range(n) if self.cached(request, p) is None]
        for start in range(0, len(todo), chunk):
            self._call(request, todo[start:start + chunk], n, False, stop, None)
            if progress is not None:
                progress(n - len(todo) + min(start + chunk, len(todo)), n)
            time.sleep(0.01)  # let a waiting click take the model between chunks
        return n

    def top_predictions(self, prompt: str, k: int = 8) -> list[tuple[str, float]]:
        """The ``k`` most probable next tokens after ``prompt`` (for the target choices)."""
        cached = self.predictions.get((prompt, k))
        if cached is not None:
            return cached  # type: ignore[no-any-return]

        def body(model: Any) -> list[tuple[str, float]]:
            access = ModelAccess(model)
            tokens = access.to_tokens(prompt, prepend_bos=None)
            with access.frozen(), torch.no_grad():
                logits = model(tokens)[0, -1].float()
            probs, ids = torch.topk(torch.softmax(logits, -1), k)
            return [(access.token_str(int(i)), float(p)) for p, i in zip(probs, ids)]

        if not prompt or not prompt.strip():
            return []
        return self.predictions.put((prompt, k), self._run(None, None, body))  # type: ignore[no-any-return]

    def forecast(self, series: Sequence[float], scope: str, digits: int = 2,
                 stop: Optional[threading.Event] = None,
                 progress: Optional[Callable[[Progress], None]] = None) -> Any:
        """The time-series scope of the value after ``series`` (value-level influence and the
        forecast distribution): :func:`tl_jacobian_scopes.timeseries.forecast_scope`."""
        from ..timeseries import forecast_scope

        return self._run(stop, progress, lambda model: forecast_scope(model, list(series), scope, digits=digits,
                                                                        progress=False))


def pasted_series(text: str) -> list[float]:
    """Numbers pasted into the page, separated by commas, spaces or line breaks.

    Raises:
        PromptError: Something that is not a number, or fewer than 3 values.
    """
    items = [item for item in re.split(r"[,;\s]+", text.strip()) if item]
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
