"""The launch-bound (GPU-like) regime measured on CPU, and the issue-24 goals, in one process.

On a GPU a small model's forward and backward take milliseconds, so Python and dispatch
overhead per call decides the speed. On CPU that regime is reproduced by a proxy whose FLOPs
are negligible: SmolLM2's depth (30 layers, 9 heads, 3 KV heads) at hidden width 72, random
weights built from a config (no download), 64 tokens; width 576 (SmolLM2-135M's own shape,
random weights) is the compute-bound counterpart. Sections, all in this process:

1. the proxy, each width and backend (TransformerBridge; HookedTransformer where installed):
   per-call CPU time of ours (Semantic, Temperature, Fisher rank 1; with the direct pass, and
   with the bridge path it replaces), of the TransformerBridge's own forward + backward, and of
   the authors' code, each over the HF floor: the plain Hugging Face model's forward and the
   backward of the explained logit to the input embeddings (parameters frozen, the explained
   row's logits only);
2. Python calls per scope call (``sys.setprofile``: Python frames and C functions): a count that
   does not depend on the machine, and transfers to a GPU;
3. the per-call overhead in CPU ms (everything but the forward pass, the backward passes, the
   explained row's unembedding and Fisher's probe construction; see call_overhead.py);
4. the real model (the embedded SmolLM2-135M) against the authors' code at 64 and 256 tokens.

The explained prediction is the one at the second-to-last token, of the last token (the
authors' default), for every method. Times are this thread's CPU time (``time.thread_time``),
medians over interleaved rounds (each method once per round, after a warm-up round): on a
shared machine far steadier than wall-clock time. Run with one thread.

The authors' code (github.com/AntonioLiu97/JacobianScopes) is not part of this repository:
``--original`` names a folder holding its ``JacobianScopes`` package (a clone's ``src/``);
without it, the columns that need it are left out and its goal is reported as not measured.

Usage (the one command; about 3-5 minutes on a quiet 2-core machine):
    git clone https://github.com/AntonioLiu97/JacobianScopes /tmp/original
    OMP_NUM_THREADS=1 python benchmarks/launch_bound.py --original /tmp/original/src
Options: --rounds N (proxy, default 9), --real-rounds N (default 5), --quick (fewer rounds, 64
tokens only for the real model), --no-real, --json PATH (default benchmarks/results/launch_bound_cpu.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tl_jacobian_scopes as tjs  # noqa: E402
from tl_jacobian_scopes.environment import environment  # noqa: E402
from tl_jacobian_scopes.models.access import EMBED_HOOK  # noqa: E402
from tl_jacobian_scopes.models.hook_names import FINAL_HOOK  # noqa: E402
from tl_jacobian_scopes.models.loading import bridge_from_hf, has_hooked_transformer, hooked_from_hf  # noqa: E402
from tl_jacobian_scopes.scopes import declarations, direct_forward, engine, probes  # noqa: E402

from speed import import_original, original_scope, prompt_tokens  # noqa: E402

SCOPES = ("semantic", "temperature", "fisher rank 1")
GOALS = {"semantic": 1.1, "temperature": 1.1, "fisher rank 1": 1.3}  # proxy, ours / HF floor
ORIGINAL_GOAL = 0.9  # real model, ours / the authors' code
OVERHEAD_GOAL_MS = 5.0
RESULTS = Path(__file__).resolve().parent / "results"


# ---- the proxy ---------------------------------------------------------------------------------


def proxy_hf(width: int, vocab: int, seed: int = 0, layers: int = 30) -> Any:
    """SmolLM2-135M's layout (30 layers, 9 heads, 3 KV heads, tied embeddings) at ``width``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=width * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    )
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norm gains around 1, so that ‖y‖ varies (as a trained model's does)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model.eval()


def hf_floor(hf: Any, ids: torch.Tensor, pos: int, target: int) -> None:
    """Plain HF forward (explained row's logits only) + backward of one logit to the input embeddings."""
    x = hf.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    keep = ids.shape[0] - pos
    logits = hf(inputs_embeds=x, logits_to_keep=keep, use_cache=False).logits
    torch.autograd.grad(logits[0, 0, target], x)


def bridge_alone(model: Any, ids: torch.Tensor, pos: int, target: int) -> None:
    """The TransformerLens model's own forward (its default attention) to ``y`` and backward to
    ``hook_embed``, with run_with_hooks: what any hook-based gradient pays."""
    seen: dict[str, torch.Tensor] = {}

    def leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["x"] = torch.zeros_like(act, requires_grad=True)
        return act + seen["x"]

    def final(act: torch.Tensor, hook: Any) -> None:
        seen["y"] = act
        raise engine._StopForward

    with torch.enable_grad():
        try:
            model.run_with_hooks(ids[None], fwd_hooks=[(EMBED_HOOK, leaf), (FINAL_HOOK, final)])
        except engine._StopForward:
            pass
        logit = seen["y"][0, pos] @ model.W_U[:, target]
        torch.autograd.grad(logit, seen["x"])


def frozen(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def ours(model: Any, ids: torch.Tensor, pos: int, scope: str, direct: bool = True) -> Callable[[], Any]:
    def call() -> Any:
        direct_forward.ENABLED[0] = direct
        try:
            if scope == "semantic":
                return tjs.semantic_scope(model, ids, position=pos, target="next")
            if scope == "temperature":
                return tjs.temperature_scope(model, ids, position=pos)
            return tjs.fisher_scope(model, ids, position=pos, rank=1)
        finally:
            direct_forward.ENABLED[0] = True
    return call


def theirs(original: Any, hf: Any, ids: torch.Tensor, scope: str) -> Callable[[], Any]:
    mode = {"semantic": "Semantic", "temperature": "Temperature", "fisher rank 1": "Fisher"}[scope]
    id_list = ids.tolist()
    return lambda: original_scope(original, hf, id_list, mode)


# ---- timing ------------------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(methods: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds of each method, round-robin after one warm-up round (on a GPU
    the wall time, synchronized, is the one that counts; the CPU time is the host's share)."""
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    wall: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds + 1):
        for name, fn in methods.items():
            _sync()
            w, c = time.perf_counter(), time.thread_time()
            fn()
            _sync()
            c, w = time.thread_time() - c, time.perf_counter() - w
            if r:
                cpu[name].append(c)
                wall[name].append(w)
    return {name: {"cpu_s": statistics.median(cpu[name]), "wall_s": statistics.median(wall[name])} for name in methods}


def count_calls(fn: Callable[[], Any]) -> dict[str, int]:
    """Python frames and C functions entered during one call (``sys.setprofile``)."""
    counts = {"call": 0, "c_call": 0}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in counts:
            counts[event] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return {"python": counts["call"], "c_functions": counts["c_call"], "total": counts["call"] + counts["c_call"]}


class Split:
    """Wraps the passes of a scope call to time them (CPU): the rest of the call is its overhead."""

    PASSES = ("forward", "backward", "unembedding row", "Fisher probes")

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, key: str) -> None:
        fn = getattr(owner, name)
        totals = self.totals

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[key] = totals.get(key, 0.0) + time.thread_time() - start
        self.saved.append((owner, name, fn))
        setattr(owner, name, wrapper)

    def __enter__(self) -> "Split":
        self._wrap(engine, "run_model", "forward")
        self._wrap(engine, "run_direct", "forward")
        self._wrap(torch.autograd, "grad", "backward")
        self._wrap(probes, "logits_at", "unembedding row")
        self._wrap(declarations, "_fisher_probes", "Fisher probes")
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, fn in reversed(self.saved):
            setattr(owner, name, fn)

    def overhead_ms(self, fn: Callable[[], Any], rounds: int) -> dict[str, float]:
        rows = []
        for r in range(rounds + 1):
            self.totals.clear()
            start = time.thread_time()
            fn()
            total = time.thread_time() - start
            if r:
                rows.append({"total": total, **self.totals})
        med = {k: 1e3 * statistics.median(row.get(k, 0.0) for row in rows) for k in ("total", *self.PASSES)}
        med["overhead"] = 1e3 * statistics.median(row["total"] - sum(row.get(k, 0.0) for k in self.PASSES)
                                                   for row in rows)
        return med


def check_fisher_wrap() -> None:
    """``_fisher_probes`` is looked up as a global of FISHER's strategy: wrap it there."""
    strategy = declarations.FISHER.strategy
    if strategy.__globals__ is not vars(declarations):
        raise SystemExit("declarations.FISHER.strategy no longer lives in declarations.py: update Split")


# ---- sections ----------------------------------------------------------------------------------


def section_proxy(width: int, tokenizer: Any, original: Any, rounds: int, n_tokens: int = 64,
                  device: str = "cpu", layers: int = 30) -> dict[str, Any]:
    hf = proxy_hf(width, len(tokenizer), layers=layers).to(device)
    pristine = copy.deepcopy(hf)  # the bridge swaps its HF model's modules for its own in place
    frozen(pristine)
    backends: dict[str, Any] = {"bridge": bridge_from_hf(copy.deepcopy(hf), tokenizer, f"proxy-{width}", device=device)}
    if has_hooked_transformer():
        backends["hooked"] = hooked_from_hf(copy.deepcopy(hf), tokenizer, device=device)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, len(tokenizer), (n_tokens,), generator=gen)
    ids[0] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    ids = ids.to(device)
    pos, target = n_tokens - 2, int(ids[-1])
    methods: dict[str, Callable[[], Any]] = {"HF floor": lambda: hf_floor(pristine, ids, pos, target)}
    for backend, model in backends.items():
        frozen(model)
        methods[f"{backend} forward+backward alone"] = lambda m=model: bridge_alone(m, ids, pos, target)
        for scope in SCOPES:
            methods[f"ours {scope}, {backend}"] = ours(model, ids, pos, scope)
            if backend == "bridge":
                methods[f"ours {scope}, bridge path"] = ours(model, ids, pos, scope, direct=False)
    if original is not None:
        for scope in SCOPES:
            methods[f"original {scope}"] = theirs(original, pristine, ids, scope)
    times = interleaved(methods, rounds)
    floor = times["HF floor"]["cpu_s"]
    calls = {name: count_calls(fn) for name, fn in methods.items()}
    check_fisher_wrap()
    with Split() as split:
        overhead = {f"ours {scope}, {b}": split.overhead_ms(ours(m, ids, pos, scope), max(3, rounds // 2))
                    for b, m in backends.items() for scope in SCOPES}
    print(f"\n[proxy] width {width}, {layers} layers, {device}, {n_tokens} tokens; CPU ms, medians of {rounds} interleaved rounds; "
          f"HF floor {1e3 * floor:.1f} ms")
    print(f"{'':38s} {'CPU ms':>8s} {'/ HF floor':>10s} {'Python calls':>13s} {'C calls':>9s} {'overhead ms':>12s}")
    rows: dict[str, Any] = {}
    for name, t in times.items():
        c = calls[name]
        o = overhead.get(name, {}).get("overhead")
        rows[name] = {**t, "over_floor": t["cpu_s"] / floor, "calls": c, **({"overhead_ms": o} if o is not None else {})}
        print(f"{name:38s} {1e3 * t['cpu_s']:8.1f} {t['cpu_s'] / floor:10.2f} {c['python']:13,d} {c['c_functions']:9,d} "
              + (f"{o:12.1f}" if o is not None else ""))
    if original is not None:
        for scope in SCOPES:
            for backend in backends:
                rows[f"ours {scope}, {backend}"]["over_original"] = (
                    times[f"ours {scope}, {backend}"]["cpu_s"] / times[f"original {scope}"]["cpu_s"])
    return {"width": width, "layers": layers, "device": device, "n_tokens": n_tokens, "rounds": rounds, "backends": list(backends), "rows": rows,
            "overhead_split_ms": overhead}


def section_real(model: Any, hf: Any, original: Any, rounds: int, lengths: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n_tokens in lengths:
        ids = prompt_tokens(model, n_tokens)
        pos, target = n_tokens - 2, int(ids[-1])
        methods: dict[str, Callable[[], Any]] = {"HF floor": lambda: hf_floor(hf, ids, pos, target)}
        for scope in SCOPES:
            methods[f"ours {scope}"] = ours(model, ids, pos, scope)
            if original is not None:
                methods[f"original {scope}"] = theirs(original, hf, ids, scope)
        times = interleaved(methods, rounds)
        floor = times["HF floor"]["cpu_s"]
        print(f"\n[real] SmolLM2-135M, {n_tokens} tokens; CPU s, medians of {rounds} interleaved rounds; "
              f"HF floor {floor:.3f} s")
        entry: dict[str, Any] = {"seconds": times}
        for scope in SCOPES:
            o = times[f"ours {scope}"]["cpu_s"]
            t = times.get(f"original {scope}", {}).get("cpu_s")
            entry[scope] = {"ours_over_floor": o / floor, **({"ours_over_original": o / t, "original_over_floor": t / floor}
                                                              if t else {})}
            print(f"    {scope:14s} ours {o:.3f} s ({o / floor:.2f} x floor)"
                  + (f", original {t:.3f} s ({t / floor:.2f} x floor): ours / original {o / t:.2f}" if t else ""))
        out[f"tokens_{n_tokens}"] = entry
    check_fisher_wrap()
    ids = prompt_tokens(model, 64)
    with Split() as split:
        out["overhead_64_ms"] = {scope: split.overhead_ms(ours(model, ids, 62, scope), rounds) for scope in SCOPES}
    print("\n[real] per-call overhead at 64 tokens, CPU ms (medians): "
          + ", ".join(f"{s} {v['overhead']:.1f} (total {v['total']:.0f})" for s, v in out["overhead_64_ms"].items()))
    return out


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    cores = os.cpu_count() or 1
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {cores} cores" + (
        ": LOADED, compare ratios only" if one > 0.75 * cores else ": quiet")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    proxy = next((p for p in results["proxy"] if p["width"] == 72), None)
    if proxy is not None:
        for backend in proxy["backends"]:
            for scope, limit in GOALS.items():
                value = proxy["rows"][f"ours {scope}, {backend}"]["over_floor"]
                found.append({"goal": f"proxy (width 72), {backend}: {scope} <= {limit}x the HF floor",
                              "value": value, "pass": value <= limit})
    real = results.get("real")
    if real is not None:
        for key in ("tokens_64", "tokens_256"):
            for scope in SCOPES:
                value = real.get(key, {}).get(scope, {}).get("ours_over_original")
                found.append({"goal": f"real model, {key.split('_')[1]} tokens: {scope} <= {ORIGINAL_GOAL}x the authors' code",
                              "value": value, "pass": None if value is None else value <= ORIGINAL_GOAL})
        for scope, split in real.get("overhead_64_ms", {}).items():
            found.append({"goal": f"real model, 64 tokens: {scope} per-call overhead <= {OVERHEAD_GOAL_MS} ms CPU",
                          "value": split["overhead"], "pass": split["overhead"] <= OVERHEAD_GOAL_MS})
    return found


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", metavar="PATH", help="a folder holding the authors' JacobianScopes package")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds on the proxy (default 9)")
    parser.add_argument("--real-rounds", type=int, default=5, help="interleaved rounds on the real model (default 5)")
    parser.add_argument("--widths", default="72,576", help="proxy widths (default 72,576)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, width 72 only, real model at 64 tokens only")
    parser.add_argument("--no-real", action="store_true", help="the proxy only")
    parser.add_argument("--json", default=str(RESULTS / "launch_bound_cpu.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.real_rounds, args.widths = 3, 3, "72"
    started = time.perf_counter()
    original = import_original(args.original) if args.original else None
    model = tjs.load_default_model(device="cpu")
    frozen(model)
    env = environment(model)
    results: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/launch_bound.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {**env, "cpu": cpu_name(), "threads": torch.get_num_threads(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load": load_note(),
                        "hooked_transformer": has_hooked_transformer(), "original": args.original},
        "proxy": [],
    }
    print(f"{results['environment']['load']}; {torch.get_num_threads()} thread(s); torch {torch.__version__}")
    for width in (int(w) for w in args.widths.split(",")):
        results["proxy"].append(section_proxy(width, model.tokenizer, original, args.rounds))
    if not args.no_real:
        hf, _ = tjs.models.load_default_hf_model()
        frozen(hf)
        lengths = (64,) if args.quick else (64, 256)
        results["real"] = section_real(model, hf.eval(), original, args.real_rounds, lengths)
    results["goals"] = goals(results)
    results["environment"]["load_after"] = load_note()
    results["seconds"] = time.perf_counter() - started
    print("\nGoals (issue 24):")
    for g in results["goals"]:
        verdict = "not measured" if g["pass"] is None else ("PASS" if g["pass"] else "FAIL")
        value = "-" if g["value"] is None else f"{g['value']:.3f}"
        print(f"    [{verdict:>12s}] {g['goal']}: {value}")
    if original is None:
        print("    (the authors' code was not given: pass --original PATH to measure those goals)")
    print(f"\n{results['seconds']:.0f} s in all; {results['environment']['load_after']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
