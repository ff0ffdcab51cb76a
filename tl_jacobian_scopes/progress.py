"""One progress line for long calls, readable live and in a saved notebook.

Every long loop of the library (a scope's probes and backward passes, its prompt batches,
the baselines' passes, the faithfulness runner) reports through :class:`Progress`:

- Nothing appears for work that ends within :data:`DELAY` seconds (the default), so quick
  calls stay quiet.
- In a Jupyter kernel the line is one display (``display(..., display_id=True)``) updated
  in place and closed in a final state ("done", or "stopped" after an error). Executors
  such as nbclient apply those updates to the saved output, so a saved notebook shows the
  final state, never a stale "0%".
- Elsewhere it is a tqdm bar on stderr, shown only when stderr is a terminal (logs and test
  runs stay clean); its last state is kept.
- Updates are throttled to at most :data:`MIN_INTERVAL` apart; progress never changes results.
- A call made while another line is running (a scope inside the faithfulness runner) stays
  silent: the outer line covers it.

Switches: ``progress=False`` on any scope call silences that call, ``progress=True`` shows
it at once (also when stderr is not a terminal); the environment variable ``TQDM_DISABLE=1``
(tqdm's own) silences everything.

Examples:
    >>> with Progress("fisher scope", total=37, unit="positions") as bar:
    ...     for _ in range(37):
    ...         bar.advance(1)
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, Callable, Iterator, Optional

#: Seconds of work before a line appears (``progress=None``).
DELAY = 2.0
#: Least seconds between two redraws (at most 5 per second).
MIN_INTERVAL = 0.2

_active = threading.local()
_observer = threading.local()


@contextlib.contextmanager
def observe(callback: Callable[["Progress"], None]) -> Iterator[None]:
    """Call ``callback(line)`` on every progress update made in this thread inside the block.

    For front ends with their own progress display (the Gradio app). The callback may raise
    to stop the work: the call then ends as after any error (model restored, line "stopped").

    Examples:
        >>> seen = []
        >>> with observe(lambda line: seen.append(line.done)):
        ...     Progress("demo", total=2, enabled=False).advance(1)
        >>> seen
        [1.0]
    """
    previous = getattr(_observer, "callback", None)
    _observer.callback = callback
    try:
        yield
    finally:
        _observer.callback = previous


def disabled_by_environment() -> bool:
    """True when ``TQDM_DISABLE`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def _kernel_display() -> Optional[Callable[..., Any]]:
    """IPython's ``display`` when running inside a Jupyter kernel, else None.

    IPython is looked up only if already imported (a kernel has it): never imported here.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:  # a terminal IPython has no kernel
        return None
    from IPython.display import display

    return display


class Progress:
    """One progress line: ``desc: done/total unit (pct%), elapsed``, ending in a final state.

    ``done`` shows a unit partly done to a tenth (``0.4/7 positions (5%)``), so the count and
    the percentage always agree.

    Args:
        desc: What runs, e.g. ``"fisher scope"``.
        total: Units of work; :meth:`advance` may add fractions of a unit.
        unit: Plural name of a unit (``"positions"``, ``"prompts"``).
        enabled: ``None``: appear after :data:`DELAY` seconds (terminal or notebook only);
            ``True``: appear at once; ``False``: never.

    Examples:
        >>> bar = Progress("demo", total=2, unit="steps", enabled=False)
        >>> bar.advance(2); bar.close(); bar.text()
        'demo: 2/2 steps, 0.0 s, done'
    """

    def __init__(self, desc: str, total: float, unit: str = "steps", enabled: Optional[bool] = None):
        self.desc, self.total, self.unit = str(desc), float(total), str(unit)
        self.done = 0.0
        self.start = time.monotonic()
        self.closed = False
        self.state = ""  # "" while running, then "done" or "stopped"
        self._last_draw = -1.0
        self._handle: Any = None
        self._bar: Any = None
        # A line opened while another runs (a scope inside the faithfulness runner) stays silent.
        nested = getattr(_active, "line", None) is not None
        self._silent = enabled is False or nested or disabled_by_environment()
        self._delay = 0.0 if enabled else DELAY
        self._forced = bool(enabled)

    # ---- reporting ----------------------------------------------------------------------

    def advance(self, n: float = 1.0) -> None:
        """Count ``n`` more units of work done (fractions allowed)."""
        self.set(self.done + n)

    def set(self, done: float) -> None:
        """Set the amount of work done (clipped to ``total``) and redraw if due."""
        self.done = min(float(done), self.total)
        self._draw(final=False)
        callback = getattr(_observer, "callback", None)
        if callback is not None:
            callback(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def shown_done(self) -> float:
        """The work done as the line shows it: floored to a tenth of a unit (a unit partly done
        reads ``0.4/7``, not ``0/7`` next to a percentage that says otherwise)."""
        return math.floor(self.done * 10 + 1e-9) / 10

    def text(self) -> str:
        """The line as plain text; its percentage is that of the count it shows, floored."""
        shown = self.shown_done()
        count = f"{shown:.0f}" if shown == int(shown) else f"{shown:.1f}"
        count += f"/{self.total:.0f} {self.unit}"
        if not self.state and self.total:
            count += f" ({math.floor(100 * shown / self.total + 1e-9):.0f}%)"
        line = f"{self.desc}: {count}, {self.elapsed():.1f} s"
        return f"{line}, {self.state}" if self.state else line

    def html(self) -> str:
        """The line as escaped HTML: a native progress bar and the text."""
        value, top = (self.done, self.total) if self.total else (1.0, 1.0)
        return (f'<div class="tjs-progress" style="font-family:monospace;font-size:12px">'
                f'<progress value="{value:.3f}" max="{top:.3f}" style="width:160px;vertical-align:middle">'
                f"</progress> {html.escape(self.text())}</div>")

    # ---- lifecycle ----------------------------------------------------------------------

    def close(self, stopped: bool = False) -> None:
        """End the line in its final state ("done", or "stopped" after an error)."""
        if self.closed:
            return
        self.closed = True
        self.state = "stopped" if stopped else "done"
        if getattr(_active, "line", None) is self:
            _active.line = None
        if self._handle is not None or self._bar is not None:
            self._draw(final=True)
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        if getattr(_active, "line", None) is None:
            _active.line = self  # calls made inside this block stay silent
        return self

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close(stopped=exc is not None)

    def _draw(self, final: bool) -> None:
        if self._silent:
            return
        now = self.elapsed()
        if not final and (now < self._delay or now - self._last_draw < MIN_INTERVAL):
            return
        opening = self._handle is None and self._bar is None
        if opening and not self._open():
            self._silent = True  # nowhere to draw (stderr is not a terminal)
            return
        self._last_draw = now
        if self._handle is not None:
            if not opening:  # _open displayed the current state already
                self._handle.update({"text/plain": self.text(), "text/html": self.html()}, raw=True)
        else:
            self._bar.n = self.shown_done()
            self._bar.set_postfix_str(self.state, refresh=False)
            self._bar.refresh()

    def _open(self) -> bool:
        display = _kernel_display()
        if display is not None:
            bundle = {"text/plain": self.text(), "text/html": self.html()}
            self._handle = display(bundle, raw=True, display_id=True)
            return self._handle is not None
        stderr = sys.stderr
        if stderr is None or not (self._forced or (hasattr(stderr, "isatty") and stderr.isatty())):
            return False
        from tqdm.std import tqdm

        self._bar = tqdm(total=self.total, desc=self.desc, unit="", file=stderr, leave=True,
                         mininterval=MIN_INTERVAL, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:g}/{total:.0f} "
                                    + self.unit.replace("{", "{{").replace("}", "}}")
                                    + " [{elapsed}<{remaining}{postfix}]")
        self._bar.start_t -= self.elapsed()  # count the time before the bar appeared
        return True


def silent_progress() -> Progress:
    """A line that never draws (the default before a call opens its own)."""
    return Progress("", 0, enabled=False)
