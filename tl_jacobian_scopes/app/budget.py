"""The app's work budget: every size a client controls, bounded in one place and shown in the page.

A shared app must not let one client's request (or its background work) hold the model for
minutes: the budget caps the prompt's length, Fisher's ``rank`` and ``samples``, the length of
a time series, and how many positions the page explains in the background. Each cap is
checked before any model work, and a refusal names the cap and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import OptionError, PromptError


@dataclass(frozen=True)
class Budget:
    """What one request may cost.

    Attributes:
        max_tokens: Longest prompt, in tokens (BOS included); ``--max-tokens`` sets it.
        max_trace_tokens: Longest prompt for Fisher's exact trace and stochastic estimate
            (hundreds of backward passes per position).
        max_rank: Largest Fisher ``rank``.
        max_samples: Most random probes for Fisher's stochastic estimate.
        max_series: Most values in a time series (pasted or generated).
        precompute: Most positions explained in the background after a result (nearest the
            explained token first).
        chunk: Positions per background step: between steps the model is free for any
            session's request, so a request waits at most one step for background work.
        max_seconds: Longest time one request may hold the model; a request still running then
            is stopped with a message (so another session waits at most this long).
        idle_s: A session's state and files are freed after this long without a request.
        cache_mb: The downloads folder (all sessions) and Gradio's file cache are each kept
            under this size.
        results_mb: The computed explanations kept for clicks (all sessions) are kept under
            this size (the oldest used go first): a bound on the server's memory whatever the
            prompts.
        probe_chunk: Most probes per backward pass (exact and stochastic Fisher, rank): a Stop,
            a closed page or another session's request is seen between two such steps.
    """

    max_tokens: int = 256
    max_trace_tokens: int = 24
    max_rank: int = 8
    max_samples: int = 64
    max_series: int = 200
    precompute: int = 64
    chunk: int = 4
    max_seconds: float = 5.0
    idle_s: float = 1800.0
    cache_mb: float = 64.0
    results_mb: float = 256.0
    probe_chunk: int = 8

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_trace_tokens", "max_rank", "max_samples", "max_series", "chunk",
                     "probe_chunk"):
            if int(getattr(self, name)) < 1:
                raise OptionError(f"The app's {name} must be at least 1, got {getattr(self, name)}.")
        if (self.precompute < 0 or self.idle_s <= 0 or self.cache_mb <= 0 or self.max_seconds <= 0
                or self.results_mb <= 0):
            raise OptionError("The app's precompute must be >= 0, max_seconds, idle_s, cache_mb and results_mb > 0.")

    @property
    def max_chars(self) -> int:
        """Longest prompt in characters, refused before tokenizing (no token is this long)."""
        return 64 * self.max_tokens

    def check_options(self, rank: int, samples: int, full_trace: bool, mode: str) -> None:
        """Refuse ``rank``/``samples`` over their caps (only those that apply to ``mode``)."""
        if mode == "rank" and rank > self.max_rank:
            raise OptionError(f"rank {rank} is over this app's limit of {self.max_rank}: ask for a smaller rank.")
        if mode == "stochastic" and samples > self.max_samples:
            raise OptionError(f"samples {samples} is over this app's limit of {self.max_samples}: ask for fewer "
                              "samples (the standard errors shown say how precise the estimate is).")

    def check_chars(self, prompt: str) -> None:
        if len(prompt) > self.max_chars:
            raise PromptError(f"The prompt has {len(prompt)} characters; this app explains prompts of up to "
                              f"{self.max_tokens} tokens: shorten it (or run the library in a notebook).")

    def check_tokens(self, n_tokens: int, full_trace: bool, label: str = "") -> None:
        """Refuse a prompt over the app's length (a lower one for exact/stochastic Fisher)."""
        if n_tokens > self.max_tokens:
            raise PromptError(f"The prompt has {n_tokens} tokens; this app explains prompts of up to "
                              f"{self.max_tokens} tokens: shorten it by {n_tokens - self.max_tokens} tokens "
                              "(or run the library in a notebook).")
        if full_trace and n_tokens > self.max_trace_tokens:
            raise PromptError(f"The prompt has {n_tokens} tokens; Fisher's {label or 'full-trace'} estimate is "
                              f"limited to {self.max_trace_tokens} tokens in this app (hundreds of backward passes "
                              "per position): shorten the prompt, or use the rank estimate.")

    def check_series(self, count: int) -> None:
        if count > self.max_series:
            raise PromptError(f"The series has {count} values; this app forecasts series of up to "
                              f"{self.max_series} values: use fewer values.")

    def over_time(self, elapsed: Optional[float] = None, done: Optional[float] = None) -> str:
        """The message for a request stopped at (or, projected, before) ``max_seconds``: how far
        it got (``done``, a fraction) and how long the whole would have taken."""
        held = self.max_seconds if elapsed is None else elapsed
        so_far = ""
        if done is not None and 0 < done < 1:
            so_far = (f" It was {done:.0%} done after {held:.1f} s; the whole request would take about "
                      f"{held / done:.0f} s.")
        return (f"Stopped: this request would hold the model for more than {self.max_seconds:g} s, this app's "
                f"limit per request (other sessions share the model).{so_far} Use a shorter prompt, the rank "
                "estimate, or fewer samples, or run the library in a notebook.")

    def describe(self) -> str:
        """The budget as one line of plain text for the page."""
        return (f"Work budget per request: at most {self.max_seconds:g} s of model time, prompts up to {self.max_tokens} tokens ({self.max_trace_tokens} for "
                f"Fisher exact/stochastic), rank ≤ {self.max_rank}, samples ≤ {self.max_samples}, series ≤ "
                f"{self.max_series} values; after a result, up to {self.precompute} positions nearest the "
                f"explained token are explained in the background, {self.chunk} at a time (any session's request "
                f"goes first between steps). One model serves every session, one request at a time: the queue "
                f"position shown is the number of requests ahead of yours.")


__all__ = ["Budget"]
