"""What the app keeps between requests: the model (loaded once, used by one request at a
time), the cached scope computations, and each browser session's stop switch."""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from typing import Any, Callable, Hashable, Iterator, Optional

import torch

from ..errors import ModelLoadError, ScopeError
from ..models.access import model_lock


class Stopped(Exception):
    """The user pressed Stop: raised from a progress update to end the computation."""


class OverTime(Stopped):
    """A request held the model longer than the app's budget allows: stopped, with a message."""


class ModelSlot:
    """The app's model: given already loaded, or loaded by name on first use.

    A failed load is reported (its :class:`ScopeError` message) on every request and retried
    on the next one, so the page keeps working and says what to fix.

    Examples:
        >>> slot = ModelSlot(model=model)
        >>> with slot.lock():
        ...     r = tjs.semantic_scope(slot.get(), "The capital of France is")
    """

    def __init__(self, model: Any = None, name: Optional[str] = None, device: Optional[str] = None,
                 loader: Optional[Callable[..., Any]] = None):
        self._model = model
        self.name = name
        self.device = device
        self._loader = loader
        self._load_guard = threading.Lock()
        self._fair = threading.Condition()
        self._waiting = 0  # requests waiting for the model (background work lets them go first)

    @property
    def label(self) -> str:
        """The model's name for the page (before loading: the name asked for)."""
        if self._model is not None:
            cfg = getattr(self._model, "cfg", None)
            return str(getattr(cfg, "model_name", None) or self.name or "model")
        return self.name or "embedded SmolLM2-135M-Instruct"

    def get(self) -> Any:
        """The model, loading it now if needed.

        Raises:
            ModelLoadError: It cannot be loaded (the message names the fix).
        """
        with self._load_guard:
            if self._model is None:
                from ..models.loading import load_model

                loader = self._loader or load_model
                try:
                    self._model = loader(self.name, device=self.device)
                except ScopeError:
                    raise
                except Exception as exc:  # a foreign failure still becomes a message, not a traceback
                    raise ModelLoadError(f"Could not load model {self.name!r} ({type(exc).__name__}: {exc}).") from exc
            return self._model

    def preload(self) -> None:
        """Start loading the model in the background (a failure is reported by the next :meth:`get`)."""
        if self._model is not None:
            return

        def load() -> None:
            try:
                self.get()
            except Exception:
                pass  # get() raises it again, with its message, for the next request

        threading.Thread(target=load, name="tjs-app-model-load", daemon=True).start()

    def lock(self) -> Any:
        """The library's per-model lock (scope calls on one model never overlap)."""
        return model_lock(self.get())

    @contextlib.contextmanager
    def hold(self, background: bool = False, stop: Optional[threading.Event] = None) -> Iterator[Any]:
        """The model, held once for a whole request (``with slot.hold() as model``).

        Background work (``background=True``) waits while any request waits for the model, so
        a request waits at most one background step, whichever session started it. ``stop``
        ends a background wait.

        Raises:
            Stopped: ``stop`` was set while waiting.
        """
        model = self.get()
        lock = model_lock(model)
        fair = self._fair
        if background:
            with fair:
                while self._waiting:
                    if stop is not None and stop.is_set():
                        raise Stopped()
                    fair.wait(0.05)
            with lock:
                yield model
            return
        with fair:
            self._waiting += 1
        try:
            lock.acquire()
        finally:
            with fair:
                self._waiting -= 1
                fair.notify_all()
        try:
            yield model
        finally:
            lock.release()


class Sessions:
    """When each browser session was last seen, so that idle sessions can be freed."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._guard = threading.Lock()

    def touch(self, session: str) -> None:
        with self._guard:
            self._seen[session] = time.monotonic()

    def forget(self, session: str) -> None:
        with self._guard:
            self._seen.pop(session, None)

    def idle(self, seconds: float) -> list[str]:
        """The sessions not seen for ``seconds`` (removed from the list)."""
        now = time.monotonic()
        with self._guard:
            gone = [s for s, t in self._seen.items() if now - t > seconds]
            for s in gone:
                del self._seen[s]
        return gone

    def __len__(self) -> int:
        with self._guard:
            return len(self._seen)


def approx_bytes(value: Any, _seen: Optional[set[int]] = None) -> int:
    """Roughly the memory ``value`` holds: its tensors' and arrays' bytes, its strings, and what
    its containers, dataclasses and objects hold, each object counted once (a cache's size
    limit, not an exact measure)."""
    seen = set() if _seen is None else _seen
    if id(value) in seen or value is None or isinstance(value, (bool, int, float)):
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return int(value.nelement() * value.element_size())
    nbytes = getattr(value, "nbytes", None)  # numpy arrays
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (str, bytes)):
        return sys.getsizeof(value)
    if isinstance(value, dict):
        return 64 + sum(approx_bytes(k, seen) + approx_bytes(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 64 + sum(approx_bytes(v, seen) for v in value)
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):
        return 64 + sum(approx_bytes(v, seen) for v in fields.values())
    return sys.getsizeof(value)


class ResultCache:
    """Least-recently-used results by key (prompt + options), shared by all sessions:
    the same key always means the same computation, so sharing is safe. At most ``size``
    items and (with ``max_bytes``) at most that many bytes (:func:`approx_bytes`): a few
    results with internals maps weigh as much as thousands without."""

    def __init__(self, size: int = 32, max_bytes: Optional[float] = None):
        self.size = size
        self.max_bytes = max_bytes
        self.nbytes = 0  # what the items hold now
        self._items: "collections.OrderedDict[Hashable, tuple[Any, int]]" = collections.OrderedDict()
        self._guard = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._guard:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            return None

    def put(self, key: Hashable, value: Any) -> Any:
        size = approx_bytes(value) + approx_bytes(key)
        with self._guard:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._items[key] = (value, size)
            self.nbytes += size
            # The newest item stays even alone over the limit: it is the result being shown.
            while len(self._items) > 1 and (len(self._items) > self.size or (
                    self.max_bytes is not None and self.nbytes > self.max_bytes)):
                _, (_, dropped) = self._items.popitem(last=False)
                self.nbytes -= dropped
            return value

    def __len__(self) -> int:
        with self._guard:
            return len(self._items)


class ClickOrder:
    """The latest click number per session (the page numbers its clicks): a click whose result
    comes after a later click's must not replace it, so the last click wins."""

    def __init__(self) -> None:
        self._latest: dict[str, float] = {}
        self._guard = threading.Lock()

    def note(self, session: str, number: Any) -> Optional[float]:
        """Record click ``number`` of ``session`` (``None`` when the page sent no valid number)."""
        try:
            value = float(number)
        except (TypeError, ValueError, OverflowError):
            return None
        if value != value:  # NaN
            return None
        with self._guard:
            self._latest[session] = max(value, self._latest.get(session, value))
        return value

    def superseded(self, session: str, number: Optional[float]) -> bool:
        """True when a later click of ``session`` was noted after click ``number``."""
        if number is None:
            return False
        with self._guard:
            return self._latest.get(session, number) > number

    def forget(self, session: str) -> None:
        with self._guard:
            self._latest.pop(session, None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._latest)


class StopSwitches:
    """Stop switches per browser session (Gradio's session hash), one per lane: the session's
    latest request, and its background work (explaining every position), which a click must
    not leave without a switch. Stop sets every lane of the session."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], threading.Event] = {}
        self._guard = threading.Lock()

    def arm(self, session: str, lane: str = "request") -> threading.Event:
        """A fresh switch for a new request (or background job) of ``session``."""
        with self._guard:
            event = self._events[(session, lane)] = threading.Event()
            return event

    def current(self, session: str, lane: str = "request") -> threading.Event:
        """The switch of ``session``'s latest request in ``lane`` (a new one if there is none)."""
        with self._guard:
            return self._events.setdefault((session, lane), threading.Event())

    def retire(self, session: str, lane: str) -> None:
        """Stop ``session``'s work in ``lane`` because newer work replaces it (a new prompt's
        explanation retires the old prompt's background job); its switch is marked ``retired``."""
        with self._guard:
            event = self._events.pop((session, lane), None)
        if event is not None:
            event.retired = True  # type: ignore[attr-defined]
            event.set()

    def stop(self, session: str) -> None:
        with self._guard:
            events = [event for (owner, _), event in self._events.items() if owner == session]
        for event in events:
            event.set()

    def end(self, session: str) -> None:
        """The session is gone (its page closed, or idle too long): stop and forget its work."""
        with self._guard:
            keys = [key for key in self._events if key[0] == session]
            events = [self._events.pop(key) for key in keys]
        for event in events:
            event.retired = True  # type: ignore[attr-defined]
            event.set()

    def sessions(self) -> set[str]:
        """The sessions with a switch (work running, or run before)."""
        with self._guard:
            return {owner for owner, _ in self._events}

    def __len__(self) -> int:
        with self._guard:
            return len(self._events)
