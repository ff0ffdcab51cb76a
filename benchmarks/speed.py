"""Scope cost against the physical floor, on the embedded default model, in one process.

Every time is a median over rounds in which each method runs once (round-robin, after a
warm-up round), so slow drifts of a shared machine hit all methods alike. Floors:

- floor (inputs): forward, then the gradient of the explained logit with respect to the
  input embeddings only (parameters frozen): the least work any input attribution does.
- floor (params): the naive ``logits[0, -1, target].backward()`` with parameter gradients.

Sections: (1) each scope / floor at 64 and 256 tokens; (2) exact Fisher time and peak
memory, and the stochastic estimator (and rank-16) against it; (3) a batch of 16 prompts
against a loop of 16 calls; (4) all positions of a 128-token text in one call against 128
calls; (5) Captum's LLMGradientAttribution on the same Hugging Face model and prompt;
(6) with ``--original PATH``: the authors' implementation (github.com/AntonioLiu97/JacobianScopes,
``src/JacobianScopes``), imported from PATH for this run only, timed against ours and the
floor on the same weights and prompt, with the agreement of their scores and ours.

Usage:
    python benchmarks/speed.py [--device cpu] [--repeats 5] [--json benchmarks/results/speed_cpu.json]
    python benchmarks/speed.py --quick   # section 1 at 64 tokens only
    git clone https://github.com/AntonioLiu97/JacobianScopes /tmp/original
    python benchmarks/speed.py --original /tmp/original/src [--only-original]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import types
import statistics
import threading
import time
from pathlib import Path

import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.environment import describe, environment
from tl_jacobian_scopes.models.access import EMBED_HOOK

from tl_jacobian_scopes.data import lambada_path  # the LAMBADA sample shipped with the package

DATA = lambada_path()
STOCHASTIC = dict(rank=None, samples=24)  # the recommended setting (deflate=8 by default)


def texts(n: int = 40) -> list[str]:
    return [json.loads(line)["text"] for line in DATA.read_text().splitlines()[:n]]


def prompt_tokens(model, n_tokens: int, start: int = 0) -> torch.Tensor:
    """LAMBADA passages joined and cut to exactly ``n_tokens`` tokens (BOS included)."""
    text = " ".join(texts(40)[start:])
    tokens = model.to_tokens(text, truncate=False)[0, :n_tokens]
    assert tokens.shape[0] == n_tokens, "not enough text for the requested length"
    return tokens


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_medians(methods: dict, repeats: int, warmup: bool = True) -> dict:
    """Median seconds of each method, timed round-robin with one warm-up round."""
    times = {name: [] for name in methods}
    for round_ in range(repeats + int(warmup)):
        for name, fn in methods.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if round_ or not warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated memory (CUDA) above the start, in bytes."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = self._rss()
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, self._rss())
                time.sleep(0.005)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
        self.used = self.peak - self.base


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


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


def section_scopes(model, n_tokens: int, repeats: int) -> dict:
    tokens = prompt_tokens(model, n_tokens)
    with torch.no_grad():
        target = int(model(tokens[None])[0, -1].argmax())
    methods = {
        "floor (inputs)": lambda: floor_inputs(model, tokens, target),
        "floor (params)": lambda: floor_params(model, tokens, target),
        "semantic": lambda: tjs.semantic_scope(model, tokens, target=target),
        "temperature": lambda: tjs.temperature_scope(model, tokens),
        "fisher rank 1": lambda: tjs.fisher_scope(model, tokens, rank=1),
        "fisher rank 16": lambda: tjs.fisher_scope(model, tokens, rank=16),
        "fisher stochastic 8+24": lambda: tjs.fisher_scope(model, tokens, **STOCHASTIC),
        "semantic +internals": lambda: tjs.semantic_scope(model, tokens, target=target, internals=True),
        "fisher r1 +internals": lambda: tjs.fisher_scope(model, tokens, rank=1, internals=True),
    }
    rows = interleaved_medians(methods, repeats)
    floor = rows["floor (inputs)"]
    print(f"\n[1] {n_tokens} tokens: median seconds and ratios to the floors")
    print(f"{'':24s} {'median s':>9s} {'/ floor(inputs)':>16s} {'/ floor(params)':>16s}")
    for name, seconds in rows.items():
        print(f"{name:24s} {seconds:9.3f} {seconds / floor:16.2f} {seconds / rows['floor (params)']:16.2f}")
    print(
        f"internal maps cost: semantic {rows['semantic +internals'] / rows['semantic']:.2f}x, "
        f"fisher rank 1 {rows['fisher r1 +internals'] / rows['fisher rank 1']:.2f}x the token-only time"
    )
    return rows


def section_exact(model, n_tokens: int, device: str) -> dict:
    tokens = prompt_tokens(model, n_tokens)
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        exact = tjs.fisher_scope(model, tokens, rank=None, progress=False)
        exact_s = time.perf_counter() - start
    out = {"exact_s": exact_s, "exact_peak_mib": mem.used / 2**20}
    for name, kwargs in [("stochastic 8+24", STOCHASTIC), ("rank 16", dict(rank=16)), ("rank 1", dict(rank=1))]:
        runs = []
        for seed in range(3):
            start = time.perf_counter()
            r = tjs.fisher_scope(model, tokens, seed=seed, **kwargs) if "samples" in kwargs else tjs.fisher_scope(model, tokens, **kwargs)
            runs.append((time.perf_counter() - start, spearman(r.scores, exact.scores)))
        out[name] = {"s": statistics.median(t for t, _ in runs), "spearman": [round(s, 4) for _, s in runs]}
    print(f"\n[2] exact Fisher, {n_tokens} tokens: {exact_s:.1f} s, peak memory +{out['exact_peak_mib']:.0f} MiB")
    for name in ("stochastic 8+24", "rank 16", "rank 1"):
        o = out[name]
        print(f"    {name:16s} {o['s']:.2f} s = {o['s'] / exact_s:.3f} of exact, Spearman vs exact {o['spearman']}")
    return out


def section_batch(model, repeats: int) -> dict:
    prompts = [t[:300] for t in texts(16)]
    methods = {
        "semantic loop of 16": lambda: [tjs.semantic_scope(model, p) for p in prompts],
        "semantic batch of 16": lambda: tjs.semantic_scope(model, prompts),
        "fisher r1 loop of 16": lambda: [tjs.fisher_scope(model, p) for p in prompts],
        "fisher r1 batch of 16": lambda: tjs.fisher_scope(model, prompts),
    }
    rows = interleaved_medians(methods, repeats)
    lengths = [len(model.to_str_tokens(p)) for p in prompts]
    print(f"\n[3] 16 prompts of {min(lengths)}-{max(lengths)} tokens: batch vs loop")
    for scope in ("semantic", "fisher r1"):
        loop, batch = rows[f"{scope} loop of 16"], rows[f"{scope} batch of 16"]
        print(f"    {scope:10s} loop {loop:.2f} s, batch {batch:.2f} s: throughput x{loop / batch:.2f}")
    return rows


def section_positions(model) -> dict:
    tokens = prompt_tokens(model, 128, start=3)
    n = tokens.shape[0]
    out = {}
    for scope, kwargs in [("semantic", dict(target="next")), ("temperature", {})]:
        fn = getattr(tjs, f"{scope}_scope")
        start = time.perf_counter()
        matrix = fn(model, tokens, positions="all", **kwargs)
        one = time.perf_counter() - start
        start = time.perf_counter()
        for pos in range(n):
            single = dict(kwargs)
            if kwargs.get("target") == "next":
                single["target"] = int(tokens[pos + 1]) if pos + 1 < n else None
            fn(model, tokens, position=pos, **single)
        many = time.perf_counter() - start
        out[scope] = {"one_call_s": one, "separate_calls_s": many, "shape": list(matrix.scores.shape)}
        print(f"\n[4] {scope}: all {n} positions in one call {one:.1f} s vs {n} calls {many:.1f} s: x{many / one:.2f}")
    return out


def section_captum(model, device: str, repeats: int) -> dict:
    try:
        from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput
    except ImportError:
        print("\n[5] Captum not installed (pip install 'tl_jacobian_scopes[bench]'): skipped")
        return {}
    hf, tokenizer = tjs.models.load_default_hf_model()
    hf = hf.to(device)
    for p in hf.parameters():
        p.requires_grad_(False)
    text = tokenizer.decode(prompt_tokens(model, 64)[1:])  # the same 64 tokens (BOS added back below)
    inp = TextTokenInput(tokenizer.bos_token + text, tokenizer, skip_tokens=[])
    tokens = model.to_tokens(tokenizer.bos_token + text, prepend_bos=False)[0]
    with torch.no_grad():
        target_id = int(model(tokens[None])[0, -1].argmax())
    # Captum 0.9's LLMGradientAttribution accepts layer methods only (Saliency fails its type
    # check); LayerGradientXActivation with multiply_by_inputs=False is the plain gradient with
    # respect to the input embeddings, i.e. saliency before its reduction.
    saliency = LLMGradientAttribution(
        LayerGradientXActivation(hf, hf.get_input_embeddings(), multiply_by_inputs=False), tokenizer
    )
    target_str = tokenizer.decode([target_id])
    methods = {
        "captum gradient (LLMGradientAttribution)": lambda: saliency.attribute(inp, target=target_str),
        "semantic scope": lambda: tjs.semantic_scope(model, tokens, target=target_id),
        "floor (inputs)": lambda: floor_inputs(model, tokens, target_id),
    }
    rows = interleaved_medians(methods, repeats)
    print(f"\n[5] Captum on the same model and {len(tokens)}-token prompt (target {target_str!r})")
    for name, s in rows.items():
        print(f"    {name:42s} {s:.3f} s  ({s / rows['floor (inputs)']:.2f} x floor)")
    return rows


# ---- (6) the authors' implementation ----------------------------------------------------------


def import_original(path: str) -> types.ModuleType:
    """The authors' ``JacobianScopes.JacobianScopes`` module, imported from ``path`` (a folder
    holding their ``JacobianScopes`` package). Their package ``__init__`` also imports their
    plotting helpers (IPython, matplotlib), which scoring does not need: the package is
    registered bare so that only the scoring modules (torch, numpy, transformers) load."""
    folder = Path(path).expanduser().resolve() / "JacobianScopes"
    if not (folder / "JacobianScopes.py").is_file():
        raise SystemExit(f"--original: no JacobianScopes/JacobianScopes.py under {path} (pass a clone's src/)")
    package = types.ModuleType("JacobianScopes")
    package.__path__ = [str(folder)]
    sys.modules["JacobianScopes"] = package
    sys.path.insert(0, str(folder.parent))
    try:
        return importlib.import_module("JacobianScopes.JacobianScopes")
    finally:
        sys.path.remove(str(folder.parent))


def original_scope(original: types.ModuleType, hf, ids: list, mode: str):
    """Their ``run_scope(hf, tokenizer, text, mode)`` on given token ids (no tokenization):
    ``ids[0]`` is the BOS (their ``front_pad=1``; they score tokens 1.. only), and the
    explained prediction is their default ``loss_position``: the one at the second-to-last
    token, of the last token. Fisher is their ``method="low_rank", k=1``."""
    utils = sys.modules["JacobianScopes.JacobianScopes_utils"]
    input_ids = torch.tensor([ids], dtype=torch.long, device=hf.device)
    grad_idx = list(range(1, len(ids)))
    residual = torch.nn.Parameter(torch.zeros(len(grad_idx), hf.config.hidden_size, device=hf.device))
    presence = torch.ones(len(ids), 1, device=hf.device)
    forward_pass = utils.customize_forward_pass(hf, residual, presence, input_ids, grad_idx)
    loss_position = len(ids) - 2
    if mode == "Semantic":
        return original.semantic_scope_scores(forward_pass, residual, loss_position)[0]
    if mode == "Temperature":
        return original.temperature_scope_scores(forward_pass, residual, loss_position)[0]
    lm_head = utils.get_lm_head(hf)
    return original.fisher_scope_scores(forward_pass, residual, loss_position, lm_head, method="low_rank", k=1)[0]


def agreement(ours: torch.Tensor, theirs) -> dict:
    """Spearman and relative errors of our scores (tokens 1..) against theirs (causal zeros
    at the last token excluded: it comes after the explained position)."""
    a = ours[1:-1].double()
    b = torch.as_tensor(theirs[:-1]).double()
    rel = (a - b).abs() / b.abs().max()
    return {"spearman": round(spearman(a, b), 6), "max_rel_err": float(rel.max()),
            "median_rel_err": float(rel.median()), "last_token_theirs": float(theirs[-1])}


def section_original(model, path: str, device: str, repeats: int, lengths=(64, 256)) -> dict:
    """Ours vs theirs vs the floor, interleaved in one process, on the same weights and prompt."""
    original = import_original(path)
    # The bridge swaps its Hugging Face model's modules for bridge components in place (and
    # makes it eager): theirs runs on a second, untouched load of the same weights, as a user of
    # their code has it (float32, default attention kernel, parameters requiring grad).
    hf, _ = tjs.models.load_default_hf_model()
    hf = hf.to(device)
    same = torch.equal(hf.lm_head.weight.detach().cpu(), model.W_U.detach().T.cpu()) and torch.equal(
        hf.model.embed_tokens.weight.detach().cpu(), model.W_E.detach().cpu())
    attn = getattr(hf.config, "_attn_implementation", None)
    print(f"\n[6] the original (JacobianScopes at {path}) on a second load of the same weights "
          f"(identical: {same}; their attention kernel: {attn})")
    out: dict = {"path": str(path), "same_weights": same, "their_attention": attn, "repeats": repeats}
    scopes = {
        "semantic": ("Semantic", lambda t, pos: tjs.semantic_scope(model, t, position=pos, target="next")),
        "temperature": ("Temperature", lambda t, pos: tjs.temperature_scope(model, t, position=pos)),
        "fisher rank 1": ("Fisher", lambda t, pos: tjs.fisher_scope(model, t, position=pos, rank=1)),
    }
    for n_tokens in lengths:
        tokens = prompt_tokens(model, n_tokens)
        ids, pos, target = tokens.tolist(), n_tokens - 2, int(tokens[-1])
        methods = {"floor (inputs)": lambda: floor_inputs(model, tokens, target)}
        for name, (mode, ours) in scopes.items():
            methods[f"ours {name}"] = lambda ours=ours: ours(tokens, pos)
            methods[f"original {name}"] = lambda mode=mode: original_scope(original, hf, ids, mode)
        rows = interleaved_medians(methods, repeats)
        floor = rows["floor (inputs)"]
        print(f"    {n_tokens} tokens, medians of {repeats} interleaved rounds (floor {floor:.3f} s):")
        print(f"    {'':14s} {'ours s':>8s} {'original s':>11s} {'ours/original':>14s} {'ours/floor':>11s} "
              f"{'original/floor':>15s} {'Spearman':>9s} {'max rel err':>12s}")
        entry: dict = {"seconds": rows}
        for name, (mode, ours) in scopes.items():
            agree = agreement(ours(tokens, pos).scores, original_scope(original, hf, ids, mode))
            o, t = rows[f"ours {name}"], rows[f"original {name}"]
            entry[name] = {"ours_s": o, "original_s": t, "ours_over_original": o / t, "ours_over_floor": o / floor,
                           "original_over_floor": t / floor, **agree}
            print(f"    {name:14s} {o:8.3f} {t:11.3f} {o / t:14.2f} {o / floor:11.2f} {t / floor:15.2f} "
                  f"{agree['spearman']:9.4f} {agree['max_rel_err']:12.2e}")
        out[f"tokens_{n_tokens}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="section 1 at 64 tokens only")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--original", metavar="PATH",
                        help="a folder holding the authors' JacobianScopes package (a clone's src/): section 6")
    parser.add_argument("--only-original", action="store_true", help="with --original: section 6 only")
    parser.add_argument("--original-repeats", type=int, default=7, help="rounds of section 6 (default 7)")
    args = parser.parse_args()

    model = tjs.load_default_model(device=args.device)
    if args.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(True)  # the model's natural state, for the naive floor
    env = environment(model)
    print(f"default model: {describe(env)}")
    results = {"device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(), "environment": env}
    if args.original:
        results["original"] = section_original(model, args.original, args.device, args.original_repeats)
    if not args.only_original:
        results["scopes_64"] = section_scopes(model, 64, args.repeats)
    if not args.quick and not args.only_original:
        results["scopes_256"] = section_scopes(model, 256, max(3, args.repeats // 2))
        results["exact_64"] = section_exact(model, 64, args.device)
        results["batch_16"] = section_batch(model, max(2, args.repeats // 2))
        results["positions_128"] = section_positions(model)
        results["captum_64"] = section_captum(model, args.device, args.repeats)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
