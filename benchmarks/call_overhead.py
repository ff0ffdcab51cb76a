"""Per-call overhead of the token-level scopes: everything but the model's forward and backward passes.

Each call's time is split, by wrapping the functions in this process, into the forward pass
(``model.__call__``), the backward passes (``torch.autograd.grad``), the unembedding of the
explained row (``probes.logits_at``: ``y @ W_U`` over the 49k vocabulary, a pass the model's own
forward would make), Fisher's probe construction (``_fisher_probes``), and the rest: the
overhead (input checks, the attention-kernel decision, the memory guard, ``ModelAccess.frozen()``,
hook registration, result construction). The main parts of the rest are listed.

Times are this thread's CPU time (``time.thread_time``), medians over interleaved rounds: on
a shared machine they are far steadier than wall-clock time (the process is not charged while
descheduled), though cache and memory contention still inflate them. Run with one thread.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/call_overhead.py [--backend hooked] [--rounds 7] [--tokens 64]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any, Callable

import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.models import access as access_module
from tl_jacobian_scopes.scopes import declarations, driver, probes, runner

from speed import prompt_tokens  # benchmarks/speed.py

TOTALS: dict[str, float] = {}


def _timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[key] = TOTALS.get(key, 0.0) + time.thread_time() - start
    return wrapper


def _timed_context(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        manager = fn(*args, **kwargs)
        manager.__enter__()
        TOTALS[key] = TOTALS.get(key, 0.0) + time.thread_time() - start
        try:
            yield
        finally:
            start = time.thread_time()
            manager.__exit__(None, None, None)
            TOTALS[key] += time.thread_time() - start
    return wrapper


def instrument(model: Any) -> None:
    torch.autograd.grad = _timed("backward", torch.autograd.grad)
    cls = type(model)
    cls.__call__ = _timed("forward", cls.__call__)
    cls.hooks = _timed_context("model.hooks()", cls.hooks)
    access_module.ModelAccess.frozen = _timed_context("ModelAccess.frozen()", access_module.ModelAccess.frozen)
    probes.logits_at = _timed("unembedding row", probes.logits_at)
    declarations.FISHER.strategy.__globals__["_fisher_probes"] = _timed(
        "Fisher probes", declarations._fisher_probes)
    for module, name in [(driver, "plan_run"), (driver, "attention_kernel"), (runner, "attention_kernel"),
                         (driver, "check_memory"), (driver, "make_result"), (runner, "probe_chunk_size")]:
        if hasattr(module, name):
            label = "attention_kernel()" if name == "attention_kernel" else f"{name}()"
            setattr(module, name, _timed(label, getattr(module, name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=None, help="bridge or hooked (default: the best installed)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    model = tjs.load_default_model(backend=args.backend)
    for p in model.parameters():
        p.requires_grad_(True)  # the model's natural state (frozen() must switch the flags off and back)
    tokens = prompt_tokens(model, args.tokens)
    pos = args.tokens - 2
    calls = {
        "semantic": lambda: tjs.semantic_scope(model, tokens, position=pos, target="next"),
        "temperature": lambda: tjs.temperature_scope(model, tokens, position=pos),
        "fisher rank 1": lambda: tjs.fisher_scope(model, tokens, position=pos, rank=1),
    }
    instrument(model)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
    for r in range(args.rounds + 1):
        for name, call in calls.items():
            TOTALS.clear()
            start = time.thread_time()
            call()
            TOTALS["total"] = time.thread_time() - start
            if r:  # round 0 warms up
                rounds[name].append(dict(TOTALS))
    print(f"{type(model).__name__}, {args.tokens} tokens, {torch.get_num_threads()} thread(s); "
          f"CPU ms, medians of {args.rounds} rounds")
    passes = ("forward", "backward", "unembedding row", "Fisher probes")
    for name, rows in rounds.items():
        med = {k: 1e3 * statistics.median(row.get(k, 0.0) for row in rows) for k in {k for row in rows for k in row}}
        rest = 1e3 * statistics.median(row["total"] - sum(row.get(k, 0.0) for k in passes) for row in rows)
        print(f"\n{name}: total {med['total']:.0f}, forward {med['forward']:.0f}, backward {med['backward']:.0f}, "
              f"unembedding row {med['unembedding row']:.1f}"
              + (f", Fisher probes {med['Fisher probes']:.1f}" if "Fisher probes" in med else "")
              + f"; overhead (the rest) {rest:.1f}")
        for key in sorted(k for k in med if k not in passes and k != "total"):
            print(f"    {key:26s} {med[key]:6.2f}")


if __name__ == "__main__":
    main()
