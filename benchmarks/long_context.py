"""Peak memory and time of a scope against prompt length, one fresh process per measurement.

Each measurement runs in its own subprocess (so one peak cannot hide another): load the
embedded default model, note the resident memory, run the scope once on a LAMBADA prompt
cut to exactly ``n`` tokens, and report the peak resident memory (``VmHWM``) above the
loaded model, the wall time, the attention kernel the call used, and the memory guard's
estimate for that call (which must bound the measured peak). ``--kernel eager`` attaches
a no-op hook to ``blocks.0.attn.hook_pattern``, which keeps the bridge's eager attention.
A length the memory guard refuses is reported as refused, not run.

With ``--original PATH`` (a clone's ``src/``, see benchmarks/speed.py) the authors'
implementation is measured the same way, on a plain Hugging Face load of the same weights
(their default attention kernel, parameters requiring grad, as their users run it); it has no
memory guard, so a length that does not fit fails (reported as an error); ``--limit-gib``
caps each child's address space so that such a run fails alone instead of calling the
machine's out-of-memory killer.

Usage (one process at a time; memory is what matters on a shared machine):
    OMP_NUM_THREADS=1 python benchmarks/long_context.py [--lengths 256 1024 2048 4096 8192]
        [--methods semantic fisher] [--kernels sdpa eager] [--original /tmp/original/src]
        [--json benchmarks/results/long_context_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
from tl_jacobian_scopes.data import lambada_path  # the LAMBADA sample shipped with the package

DATA = lambada_path()
METHODS = {"semantic": ("semantic_scope", {}), "fisher": ("fisher_scope", {"rank": 1})}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def prompt(tokenize: Any, n_tokens: int) -> Any:
    """LAMBADA passages joined and cut to exactly ``n_tokens`` tokens (BOS included)."""
    lines = DATA.read_text().splitlines()
    text = " ".join(json.loads(line)["text"] for line in lines[: max(40, n_tokens // 60)])
    tokens = tokenize(text)[:n_tokens]
    assert tokens.shape[0] == n_tokens, "not enough text for the requested length"
    return tokens


def measure_original(method: str, n_tokens: int, path: str) -> dict[str, Any]:
    """The authors' scope on a plain Hugging Face load, in this process (the child)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tl_jacobian_scopes as tjs
    from speed import import_original, original_scope  # type: ignore[import-not-found]

    original = import_original(path)
    hf, _ = tjs.models.load_default_hf_model()
    model = tjs.load_default_model("cpu")  # only its tokenizer, for the same prompt as ours
    tokens = prompt(lambda text: model.to_tokens(text, truncate=False)[0], n_tokens)
    del model
    row: dict[str, Any] = dict(method=method, tokens=n_tokens, impl="original",
                               kernel=str(getattr(hf.config, "_attn_implementation", None)),
                               threads=torch.get_num_threads())
    base = _kib("VmRSS")
    # VmHWM counts the peak since start: reset it so that the loads above do not count.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    original_scope(original, hf, tokens.tolist(), {"semantic": "Semantic", "fisher": "Fisher"}[method])
    row["seconds"] = time.perf_counter() - start
    row["peak_mib"] = (_kib("VmHWM") - base) / 1024
    return row


def measure(method: str, n_tokens: int, kernel: str) -> dict[str, Any]:
    """One measurement, in this process (the child)."""
    import torch

    import tl_jacobian_scopes as tjs
    from tl_jacobian_scopes.errors import ScopeMemoryError
    from tl_jacobian_scopes.models.access import ModelAccess
    from tl_jacobian_scopes.scopes import engine

    model = tjs.load_default_model("cpu")
    access = ModelAccess(model)
    tokens = prompt(lambda text: model.to_tokens(text, truncate=False)[0], n_tokens)
    fwd_hooks = [("blocks.0.attn.hook_pattern", lambda act, hook: None)] if kernel == "eager" else []
    fn_name, options = METHODS[method]
    with model.hooks(fwd_hooks=fwd_hooks):
        used = engine.attention_kernel(access)
        estimate = engine.scope_memory(access, n_tokens, kernel=used)
        base = _kib("VmRSS")
        row: dict[str, Any] = dict(method=method, tokens=n_tokens, impl="ours", kernel=used,
                                   estimate_mib=estimate / 2**20, n_ctx=access.n_ctx,
                                   threads=torch.get_num_threads())
        with open("/proc/self/clear_refs", "w") as f:  # the peak of this call only, not of loading
            f.write("5")
        start = time.perf_counter()
        try:
            getattr(tjs, fn_name)(model, tokens, **options)
        except ScopeMemoryError as exc:
            return {**row, "refused": str(exc)}
        row["seconds"] = time.perf_counter() - start
    row["peak_mib"] = (_kib("VmHWM") - base) / 1024
    return row


def run_child(method: str, n_tokens: int, kernel: str, original: str = "", limit_gib: float = 0) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    flags = (["--original", original] if original else []) + (["--limit-gib", str(limit_gib)] if limit_gib else [])
    out = subprocess.run([sys.executable, __file__, "--child", method, str(n_tokens), kernel, *flags],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return dict(method=method, tokens=n_tokens, impl="original" if original else "ours", kernel=kernel,
                    error=out.stderr.strip()[-400:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| implementation | method | tokens | kernel | peak (MiB above model) | guard estimate (MiB) | time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        head = f"| {r.get('impl', 'ours')} | {r['method']} | {r['tokens']} | {r['kernel']} |"
        estimate = f"{r['estimate_mib']:.0f}" if "estimate_mib" in r else "-"
        if "refused" in r or "error" in r:
            what = "refused by the memory guard" if "refused" in r else "error: " + r["error"].splitlines()[-1]
            lines.append(f"{head} {what} | {estimate} | - |")
        else:
            lines.append(f"{head} {r['peak_mib']:.0f} | {estimate} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096, 8192])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--kernels", nargs="+", choices=["sdpa", "eager"], default=["sdpa"])
    parser.add_argument("--original", metavar="PATH", default="",
                        help="also measure the authors' implementation imported from PATH (a clone's src/)")
    parser.add_argument("--only-original", action="store_true", help="with --original: skip our rows")
    parser.add_argument("--limit-gib", type=float, default=0,
                        help="cap each measuring process's address space (GiB) so an oversized run fails alone")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "TOKENS", "KERNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.limit_gib:
            import resource

            cap = int(args.limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        method, n_tokens, kernel = args.child[0], int(args.child[1]), args.child[2]
        row = measure_original(method, n_tokens, args.original) if args.original else measure(method, n_tokens, kernel)
        print(json.dumps(row))
        return

    sys.path.insert(0, str(ROOT))
    from tl_jacobian_scopes.environment import describe, environment

    env = environment()
    print(describe(env))
    rows = []
    for n in args.lengths:
        for kernel in [] if args.only_original else args.kernels:
            for method in args.methods:
                rows.append(run_child(method, n, kernel, limit_gib=args.limit_gib))
                print(rows[-1], flush=True)
        for method in args.methods if args.original else []:
            rows.append(run_child(method, n, "default", args.original, args.limit_gib))
            print(rows[-1], flush=True)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
