"""Every GPU number the project reports, in one run on one CUDA GPU (about 8 minutes on an H100).

Sections (each writes ``benchmarks/results/<name>_cuda.json`` with the environment):

1. ``speed``: ours (Semantic, Temperature, Fisher rank 1) against the HF floor (plain Hugging
   Face forward + backward of the explained logit to the input embeddings) and, with
   ``--original``, the authors' code, on the embedded SmolLM2-135M at 64, 256, 1,024 and 4,096
   tokens: synchronized wall-clock medians of interleaved rounds;
2. ``launch_bound``: the proxy of benchmarks/launch_bound.py (SmolLM2's depth at width 72 and
   576, random weights), with Python calls per scope call;
3. ``batch``: 16 prompts in one call against a loop of 16 calls (throughput);
4. ``long_context``: peak GPU memory (``torch.cuda.max_memory_allocated`` above the loaded
   model) and time of one scope call at 1,024 to 8,192 tokens, with the memory guard's estimate
   (ours) and, with ``--original``, the authors' code;
5. ``gpu_tests``: the tests that need a GPU (``skipif(not torch.cuda.is_available())``, in
   tests/test_multi_device.py) and the device tests, run with pytest.

Without a CUDA device it refuses (exit status 2). ``--dry-run`` runs every code path on the
CPU instead, on a 2-layer random proxy at short lengths, writing ``*_dryrun.json`` into
``--out`` (tests/test_gpu_script.py runs it): no number it prints means anything.

Usage (the one command):
    git clone https://github.com/AntonioLiu97/JacobianScopes /tmp/original
    python benchmarks/gpu.py --original /tmp/original/src
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tl_jacobian_scopes as tjs  # noqa: E402
from tl_jacobian_scopes.environment import environment  # noqa: E402
from tl_jacobian_scopes.models.loading import bridge_from_hf  # noqa: E402
from tl_jacobian_scopes.scopes import engine  # noqa: E402

import launch_bound as lb  # noqa: E402
from speed import DATA, import_original, texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCOPES = lb.SCOPES


def long_prompt(model: Any, n_tokens: int) -> torch.Tensor:
    """LAMBADA passages joined and cut to exactly ``n_tokens`` tokens (BOS included)."""
    lines = DATA.read_text().splitlines()
    text = " ".join(json.loads(line)["text"] for line in lines[: max(40, n_tokens // 50)])
    tokens: torch.Tensor = model.to_tokens(text, truncate=False)[0, :n_tokens]
    if tokens.shape[0] != n_tokens:
        raise SystemExit(f"not enough LAMBADA text for {n_tokens} tokens")
    return tokens


def section_speed(model: Any, hf: Any, original: Any, lengths: tuple[int, ...], rounds: Callable[[int], int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n_tokens in lengths:
        ids = long_prompt(model, n_tokens)
        pos, target = n_tokens - 2, int(ids[-1])
        methods: dict[str, Callable[[], Any]] = {"HF floor": lambda: lb.hf_floor(hf, ids, pos, target)}
        for scope in SCOPES:
            methods[f"ours {scope}"] = lb.ours(model, ids, pos, scope)
            if original is not None:
                methods[f"original {scope}"] = lb.theirs(original, hf, ids, scope)
        try:
            times = lb.interleaved(methods, rounds(n_tokens))
        except torch.OutOfMemoryError as exc:
            out[f"tokens_{n_tokens}"] = {"error": f"out of memory: {exc}"}
            print(f"[speed] {n_tokens} tokens: out of memory")
            continue
        floor = times["HF floor"]["wall_s"]
        entry: dict[str, Any] = {"seconds": times, "rounds": rounds(n_tokens)}
        print(f"\n[speed] {n_tokens} tokens, wall medians of {rounds(n_tokens)} rounds; HF floor {1e3 * floor:.1f} ms")
        for scope in SCOPES:
            o = times[f"ours {scope}"]["wall_s"]
            t = times.get(f"original {scope}", {}).get("wall_s")
            entry[scope] = {"ours_over_floor": o / floor,
                            **({"ours_over_original": o / t, "original_over_floor": t / floor} if t else {})}
            print(f"    {scope:14s} ours {1e3 * o:8.1f} ms ({o / floor:.2f} x floor)"
                  + (f", original {1e3 * t:8.1f} ms ({t / floor:.2f} x floor): ours / original {o / t:.2f}" if t else ""))
        out[f"tokens_{n_tokens}"] = entry
    return out


def section_batch(model: Any, rounds: int, n_prompts: int = 16, chars: int = 300) -> dict[str, Any]:
    prompts = [t[:chars] for t in texts(n_prompts)]
    methods = {
        "semantic loop": lambda: [tjs.semantic_scope(model, p) for p in prompts],
        "semantic batch": lambda: tjs.semantic_scope(model, prompts),
        "fisher r1 loop": lambda: [tjs.fisher_scope(model, p, rank=1) for p in prompts],
        "fisher r1 batch": lambda: tjs.fisher_scope(model, prompts, rank=1),
    }
    times = lb.interleaved(methods, rounds)
    out: dict[str, Any] = {"n_prompts": n_prompts, "seconds": times}
    print(f"\n[batch] {n_prompts} prompts of up to {chars} characters, wall medians of {rounds} rounds")
    for scope in ("semantic", "fisher r1"):
        loop, batch = times[f"{scope} loop"]["wall_s"], times[f"{scope} batch"]["wall_s"]
        out[scope] = {"prompts_per_s_loop": n_prompts / loop, "prompts_per_s_batch": n_prompts / batch,
                      "batch_speedup": loop / batch}
        print(f"    {scope:10s} loop {n_prompts / loop:7.1f} prompts/s, batch {n_prompts / batch:7.1f} prompts/s: "
              f"x{loop / batch:.2f}")
    return out


class Peak:
    """Peak memory of one call above the start: CUDA allocator, or resident memory on CPU (dry run)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> "Peak":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mib = float("nan")
        self.seconds = time.perf_counter() - self.start


def section_long_context(model: Any, hf: Any, original: Any, lengths: tuple[int, ...], device: str) -> dict[str, Any]:
    from tl_jacobian_scopes.models.access import ModelAccess

    access = ModelAccess(model)
    kernel = engine.attention_kernel(access)
    rows = []
    print(f"\n[long context] peak memory above the loaded model, one call each ({kernel} attention)")
    for n_tokens in lengths:
        ids = long_prompt(model, n_tokens)
        for scope, mode in (("semantic", "Semantic"), ("fisher rank 1", "Fisher")):
            calls: list[tuple[str, Callable[[], Any]]] = [("ours", lb.ours(model, ids, n_tokens - 2, scope))]
            if original is not None:
                calls.append(("original", lb.theirs(original, hf, ids, scope)))
            for impl, fn in calls:
                row: dict[str, Any] = {"tokens": n_tokens, "scope": scope, "impl": impl}
                if impl == "ours":
                    row["estimate_mib"] = engine.scope_memory(access, n_tokens, kernel=kernel) / 2**20
                try:
                    with Peak(device) as peak:
                        fn()
                    row.update(peak_mib=peak.mib, seconds=peak.seconds)
                except (torch.OutOfMemoryError, tjs.ScopeMemoryError) as exc:
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                rows.append(row)
                print(f"    {n_tokens:6d} {scope:14s} {impl:9s} "
                      + (row["error"] if "error" in row else
                         f"{row['peak_mib']:9.0f} MiB {row['seconds']:7.2f} s"
                         + (f" (estimate {row['estimate_mib']:.0f} MiB)" if "estimate_mib" in row else "")))
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    return {"kernel": kernel, "rows": rows}


def section_gpu_tests(dry_run: bool, timeout: int = 240) -> dict[str, Any]:
    """The tests that need a GPU and the device tests, in a child pytest (collected only in a dry run)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "tests/test_multi_device.py", "tests/test_devices.py", "tests/test_gpu_path_on_cpu.py"]
    if dry_run:
        cmd.append("--collect-only")
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timed out after {timeout} s: {exc}"
    summary = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
    print(f"\n[gpu tests] {' '.join(cmd[3:])}: exit {rc}; {summary[0]}")
    return {"command": " ".join(cmd), "returncode": rc, "summary": summary[0], "tail": text[-3000:],
            "seconds": time.perf_counter() - start}


def write(out_dir: Path, name: str, suffix: str, env: dict[str, Any], data: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{suffix}.json"
    path.write_text(json.dumps({"environment": env, **data}, indent=2, default=str))
    print(f"wrote {path}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", metavar="PATH", help="a folder holding the authors' JacobianScopes package")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON files go (default benchmarks/results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: run every code path on the CPU on a tiny proxy (numbers meaningless)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "launch_bound", "batch", "long_context", "gpu_tests"])
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or pass --dry-run to exercise its code on the CPU.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = "cpu" if args.dry_run else "cuda"
    suffix = "dryrun" if args.dry_run else "cuda"
    original = import_original(args.original) if args.original else None
    if args.dry_run:
        default = tjs.load_default_model(device="cpu")
        tokenizer = default.tokenizer
        hf = lb.proxy_hf(72, len(tokenizer), layers=2)
        model = bridge_from_hf(copy.deepcopy(hf), tokenizer, "proxy-dryrun", device="cpu")
        lengths, long_lengths, widths, layers = (16, 32), (32,), (72,), 2
        rounds: Callable[[int], int] = lambda n: 1
        batch_rounds = 1
    else:
        model = tjs.load_default_model(device=device)
        tokenizer = model.tokenizer
        hf, _ = tjs.models.load_default_hf_model()
        hf = hf.to(device)
        lengths, long_lengths, widths, layers = (64, 256, 1024, 4096), (1024, 2048, 4096, 8192), (72, 576), 30
        rounds = lambda n: 7 if n <= 256 else (5 if n <= 1024 else 3)
        batch_rounds = 3
    lb.frozen(model)
    lb.frozen(hf)
    hf.eval()
    env = {**environment(model), "cpu": lb.cpu_name(), "load": lb.load_note(), "dry_run": args.dry_run,
           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
           "cuda": torch.version.cuda, "original": args.original,
           "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(f"{env.get('gpu') or 'CPU (dry run)'}; torch {torch.__version__}")
    if "speed" not in args.skip:
        write(args.out, "speed", suffix, env, section_speed(model, hf, original, lengths, rounds))
    if "launch_bound" not in args.skip:
        proxies = [lb.section_proxy(w, tokenizer, original, rounds(64), device=device, layers=layers) for w in widths]
        write(args.out, "launch_bound", suffix, env, {"proxy": proxies})
    if "batch" not in args.skip:
        write(args.out, "batch", suffix, env, section_batch(model, batch_rounds, n_prompts=4 if args.dry_run else 16))
    if "long_context" not in args.skip:
        write(args.out, "long_context", suffix, env, section_long_context(model, hf, original, long_lengths, device))
    if "gpu_tests" not in args.skip:
        result = section_gpu_tests(args.dry_run)
        write(args.out, "gpu_tests", suffix, env, result)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
