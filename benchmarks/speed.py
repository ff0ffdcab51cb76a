"""Scope cost against the physical floor, on the embedded default model.

Each scope's median time is divided by the median time of one plain forward + backward of
the same model to the same single logit, all measured in this one process:

- floor (inputs): forward, then the gradient of that logit with respect to the input
  embeddings only (parameters frozen): the least work any input attribution must do.
- floor (params): the naive ``logits[0, -1, target].backward()`` with the model's default
  parameter gradients.

Usage:
    python benchmarks/speed.py [--tokens 64] [--repeats 5] [--device cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.models.access import EMBED_HOOK

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lambada_1000.jsonl"


def prompt_tokens(model, n_tokens: int) -> torch.Tensor:
    """The first LAMBADA passages, cut to exactly ``n_tokens`` tokens (BOS included)."""
    text = " ".join(json.loads(line)["text"] for line in DATA.read_text().splitlines()[:20])
    tokens = model.to_tokens(text, truncate=False)[0, :n_tokens]
    assert tokens.shape[0] == n_tokens, "not enough text for the requested length"
    return tokens


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_medians(methods: dict, repeats: int) -> dict:
    """Median seconds of each method, timed round-robin (one run of each per round) so that
    slow drifts of a shared machine hit every method alike; one warm-up round first."""
    times = {name: [] for name in methods}
    for round_ in range(repeats + 1):
        for name, fn in methods.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def floor_inputs(model, tokens, target):
    """Forward + backward of one logit to the input embeddings, parameters frozen."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        leaf = {}

        def perturb(act, hook):
            leaf["x"] = torch.zeros_like(act, requires_grad=True)
            return act + leaf["x"]

        logits = model.run_with_hooks(tokens[None], fwd_hooks=[(EMBED_HOOK, perturb)])
        torch.autograd.grad(logits[0, -1, target], leaf["x"])
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def floor_params(model, tokens, target):
    """The naive forward + backward: ``logits[0, -1, target].backward()``."""
    model.zero_grad(set_to_none=True)
    logits = model(tokens[None])
    logits[0, -1, target].backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--exact-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--skip-exact", action="store_true", help="skip exact Fisher (about a minute a run)")
    args = parser.parse_args()

    model = tjs.load_default_model(device=args.device)
    tokens = prompt_tokens(model, args.tokens).to(args.device)
    with torch.no_grad():
        target = int(model(tokens[None])[0, -1].argmax())
    for p in model.parameters():
        p.requires_grad_(True)  # the model's natural state for the naive floor

    methods = {
        "floor (inputs)": lambda: floor_inputs(model, tokens, target),
        "floor (params)": lambda: floor_params(model, tokens, target),
        "semantic": lambda: tjs.semantic_scope(model, tokens, target=target),
        "temperature": lambda: tjs.temperature_scope(model, tokens),
        "fisher rank 1": lambda: tjs.fisher_scope(model, tokens, rank=1),
        "semantic +internals": lambda: tjs.semantic_scope(model, tokens, target=target, internals=True),
        "fisher r1 +internals": lambda: tjs.fisher_scope(model, tokens, rank=1, internals=True),
        "fisher rank 16": lambda: tjs.fisher_scope(model, tokens, rank=16),
    }
    rows = interleaved_medians(methods, args.repeats)
    if not args.skip_exact:
        exact = {"fisher exact": lambda: tjs.fisher_scope(model, tokens, rank=None, progress=False)}
        rows.update(interleaved_medians(exact, args.exact_repeats))
    floor = rows["floor (inputs)"]
    print(
        f"default model, {args.tokens} tokens, device={args.device}, torch threads={torch.get_num_threads()}, "
        f"backend={tjs.models.backend_name(model)}, {platform.processor() or platform.machine()}"
    )
    print(f"{'':18s} {'median s':>9s} {'/ floor(inputs)':>16s} {'/ floor(params)':>16s}")
    for name, seconds in rows.items():
        print(f"{name:18s} {seconds:9.3f} {seconds / floor:16.2f} {seconds / rows['floor (params)']:16.2f}")
    print(
        f"internal maps cost: semantic {rows['semantic +internals'] / rows['semantic']:.2f}x, "
        f"fisher rank 1 {rows['fisher r1 +internals'] / rows['fisher rank 1']:.2f}x token-only time"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"tokens": args.tokens, "device": args.device, "seconds": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
