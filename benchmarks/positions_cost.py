"""positions= at the cost of one, and what each extra Fisher probe costs (issue 12).

(a) Fisher rank 1 over all positions of a 128-token text against Semantic over the same
    positions (and Fisher with F formed per position, the path the cost model replaced),
    timed round-robin in one process: medians.
(b) Rank-k Fisher at one position: seconds per extra probe, in floors (floor = forward,
    then the gradient of one logit with respect to the input embeddings only).
(c) Where a probe's time goes: torch.profiler over the batched backward of rank 16.

Usage:
    python benchmarks/positions_cost.py [--repeats 3] [--tokens 128] [--probe-tokens 64]
"""

from __future__ import annotations

import argparse

import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.scopes import probes as P

try:  # run as a script from the repository root, or imported
    from speed import floor_inputs, interleaved_medians, prompt_tokens
except ImportError:  # pragma: no cover
    from benchmarks.speed import floor_inputs, interleaved_medians, prompt_tokens


def positions_fisher_vs_semantic(model, n_tokens: int = 128, repeats: int = 3) -> dict:
    tokens = prompt_tokens(model, n_tokens, start=3)
    real = P.iterative_is_cheaper

    def formed() -> None:
        P.iterative_is_cheaper = lambda d, k: False  # type: ignore[assignment]
        try:
            tjs.fisher_scope(model, tokens, rank=1, positions="all", progress=False)
        finally:
            P.iterative_is_cheaper = real  # type: ignore[assignment]

    rows = interleaved_medians({
        "semantic": lambda: tjs.semantic_scope(model, tokens, positions="all", target="next", progress=False),
        "fisher r1 (Lanczos)": lambda: tjs.fisher_scope(model, tokens, rank=1, positions="all", progress=False),
        "fisher r1 (formed F)": formed,
    }, repeats)
    sem = rows["semantic"]
    print(f"\n[a] all {n_tokens} positions of one text: median seconds, ratio to Semantic")
    for name, s in rows.items():
        print(f"    {name:24s} {s:8.2f} s  x{s / sem:.2f}")
    return rows


def probe_cost(model, n_tokens: int = 64, repeats: int = 3) -> dict:
    tokens = prompt_tokens(model, n_tokens)
    target = int(model(tokens[None])[0, -1].argmax())
    methods = {"floor (inputs)": lambda: floor_inputs(model, tokens, target)}
    for k in (1, 4, 16):
        methods[f"fisher rank {k}"] = lambda k=k: tjs.fisher_scope(model, tokens, rank=k, progress=False)
    rows = interleaved_medians(methods, repeats)
    floor = rows["floor (inputs)"]
    per_probe = (rows["fisher rank 16"] - rows["fisher rank 1"]) / 15
    print(f"\n[b] {n_tokens} tokens, one position: median seconds (x floor)")
    for name, s in rows.items():
        print(f"    {name:24s} {s:8.3f} s  x{s / floor:.2f}")
    print(f"    each extra probe: {per_probe:.3f} s = {per_probe / floor:.2f} floors")
    return {**rows, "per_extra_probe_floors": per_probe / floor}


def profile_rank16(model, n_tokens: int = 64) -> None:
    tokens = prompt_tokens(model, n_tokens)
    tjs.fisher_scope(model, tokens, rank=16, progress=False)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tjs.fisher_scope(model, tokens, rank=16, progress=False)
    print(f"\n[c] rank 16 at {n_tokens} tokens: top ops by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--probe-tokens", type=int, default=64)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: a,b,c")
    args = parser.parse_args()
    model = tjs.load_default_model(device="cpu")
    skip = set(args.skip.split(","))
    if "a" not in skip:
        positions_fisher_vs_semantic(model, args.tokens, args.repeats)
    if "b" not in skip:
        probe_cost(model, args.probe_tokens, args.repeats)
    if "c" not in skip:
        profile_rank16(model, args.probe_tokens)


if __name__ == "__main__":
    main()
