"""Sweep scaling: records per second with 1 and N processes (one thread each), and the merge's cost.

Usage:
    python benchmarks/sweep_scaling.py [--data PROMPTS.jsonl] [--prompts 16]
        [--scope semantic] [--processes 1,2] [--device cpu]

Runs ``python -m tl_jacobian_scopes.sweep`` (1 process) and ``python -m torch.distributed.run
--standalone --nproc_per_node N -m tl_jacobian_scopes.sweep`` (N > 1) on the first prompts of
the data file, each into a fresh folder, with ``OMP_NUM_THREADS=1``; reads each run's summary
(``seconds``: the sweep itself, after the model is loaded; ``merge_seconds``: rank 0's merge)
and also times the launch as a whole (start-up and model loading included). Then times
:func:`tl_jacobian_scopes.sweep.merge` alone on 1000 records of the same shape split over N
part files. Prints one JSON object (with the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(processes: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    cmd = [*launcher, "-m", "tl_jacobian_scopes.sweep", str(data), "--scope", args.scope, "--limit",
           str(args.prompts), "--out", str(out), "--device", args.device]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / f"{data.stem}_summary.json").read_text())
    return {"processes": processes, "records": summary["n_computed"], "sweep_seconds": summary["seconds"],
            "records_per_second": summary["n_computed"] / summary["seconds"],
            "merge_seconds": summary["merge_seconds"], "launch_wall_seconds": wall,
            "environment": summary["environment"]}


def time_merge(sample: list[dict], parts: int, n: int = 1000) -> float:
    """Seconds to merge ``n`` records shaped like ``sample`` from ``parts`` part files."""
    from tl_jacobian_scopes.sweep import Layout, merge

    with tempfile.TemporaryDirectory() as folder:
        layout = Layout(Path(folder), "set")
        files = [layout.part(r, parts).open("w") for r in range(parts)]
        for i in range(n):
            record = {**sample[i % len(sample)], "id": i, "key": f"k{i}"}
            files[i % parts].write(json.dumps(record) + "\n")
        for f in files:
            f.close()
        start = time.perf_counter()
        merge(layout)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="JSONL prompts (default: the shipped LAMBADA sample)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--scope", default="semantic")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    args = parser.parse_args()
    if args.data is None:
        from tl_jacobian_scopes.data import lambada_path

        args.data = lambada_path()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for processes in (int(p) for p in args.processes.split(",")):
            out = Path(folder) / f"p{processes}"
            runs.append(run_sweep(processes, args.data, out, args))
            print(f"{processes} process(es): {runs[-1]['records_per_second']:.3f} records/s", file=sys.stderr)
        sample = [json.loads(line) for line in (out / f"{args.data.stem}.jsonl").read_text().splitlines()]
    environment = runs[0].pop("environment")
    for run in runs[1:]:
        run.pop("environment")
    base = runs[0]["records_per_second"]
    for run in runs:
        run["speedup"] = run["records_per_second"] / base
    record_bytes = sum(len(json.dumps(r)) + 1 for r in sample) / len(sample)
    merges = {f"{p}_parts": time_merge(sample, p) for p in sorted({1, *(r["processes"] for r in runs)})}
    print(json.dumps({"data": str(args.data), "prompts": args.prompts, "scope": args.scope, "runs": runs,
                      "merge_1000_records_seconds": merges, "record_bytes": round(record_bytes),
                      "environment": environment, "cpu_count": os.cpu_count(),
                      "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
