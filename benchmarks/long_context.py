"""Peak memory and time of a scope against prompt length, one fresh process per measurement.

Each measurement runs in its own subprocess (so one peak cannot hide another): load the
embedded default model, note the resident memory, run the scope once on a LAMBADA prompt
cut to exactly ``n`` tokens, and report the peak resident memory (``VmHWM``) above the
loaded model, the wall time, the attention kernel the call used, and the memory guard's
estimate for that call (which must bound the measured peak). ``--kernel eager`` attaches
a no-op hook to ``blocks.0.attn.hook_pattern``, which keeps the bridge's eager attention.
A length the memory guard refuses is reported as refused, not run.

Usage (one process at a time; memory is what matters on a shared machine):
    OMP_NUM_THREADS=1 python benchmarks/long_context.py [--lengths 256 1024 2048 4096 8192]
        [--methods semantic fisher] [--kernels sdpa eager] [--json benchmarks/results/long_context_cpu.json]
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
DATA = ROOT.parent / "shared" / "data" / "lambada_1000.jsonl"
METHODS = {"semantic": ("semantic_scope", {}), "fisher": ("fisher_scope", {"rank": 1})}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(method: str, n_tokens: int, kernel: str) -> dict[str, Any]:
    """One measurement, in this process (the child)."""
    import torch

    import tl_jacobian_scopes as tjs
    from tl_jacobian_scopes.errors import ScopeMemoryError
    from tl_jacobian_scopes.models.access import ModelAccess
    from tl_jacobian_scopes.scopes import engine

    model = tjs.load_default_model("cpu")
    access = ModelAccess(model)
    lines = DATA.read_text().splitlines()
    text = " ".join(json.loads(line)["text"] for line in lines[: max(40, n_tokens // 60)])
    tokens = model.to_tokens(text, truncate=False)[0, :n_tokens]
    assert tokens.shape[0] == n_tokens, "not enough text for the requested length"
    fwd_hooks = [("blocks.0.attn.hook_pattern", lambda act, hook: None)] if kernel == "eager" else []
    fn_name, options = METHODS[method]
    with model.hooks(fwd_hooks=fwd_hooks):
        used = engine.attention_kernel(access)
        estimate = engine.scope_memory(access, n_tokens, kernel=used)
        base = _kib("VmRSS")
        row: dict[str, Any] = dict(method=method, tokens=n_tokens, kernel=used, estimate_mib=estimate / 2**20,
                                   n_ctx=access.n_ctx, threads=torch.get_num_threads())
        start = time.perf_counter()
        try:
            getattr(tjs, fn_name)(model, tokens, **options)
        except ScopeMemoryError as exc:
            return {**row, "refused": str(exc)}
        row["seconds"] = time.perf_counter() - start
    row["peak_mib"] = (_kib("VmHWM") - base) / 1024
    return row


def run_child(method: str, n_tokens: int, kernel: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, __file__, "--child", method, str(n_tokens), kernel],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return dict(method=method, tokens=n_tokens, kernel=kernel, error=out.stderr.strip()[-400:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | tokens | kernel | peak (MiB above model) | guard estimate (MiB) | time (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "refused" in r or "error" in r:
            what = "refused by the memory guard" if "refused" in r else "error: " + r["error"].splitlines()[-1]
            lines.append(f"| {r['method']} | {r['tokens']} | {r['kernel']} | {what} | "
                         f"{r.get('estimate_mib', float('nan')):.0f} | - |")
        else:
            lines.append(f"| {r['method']} | {r['tokens']} | {r['kernel']} | {r['peak_mib']:.0f} | "
                         f"{r['estimate_mib']:.0f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096, 8192])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--kernels", nargs="+", choices=["sdpa", "eager"], default=["sdpa"])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "TOKENS", "KERNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.child[2])))
        return

    sys.path.insert(0, str(ROOT))
    from tl_jacobian_scopes.environment import describe, environment

    env = environment()
    print(describe(env))
    rows = []
    for n in args.lengths:
        for kernel in args.kernels:
            for method in args.methods:
                rows.append(run_child(method, n, kernel))
                print(rows[-1], flush=True)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
