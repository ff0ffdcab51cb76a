"""``tl-jacobian-scopes-timeseries``: the parroting-versus-recency study (docs/method.md §8).

For each family and seed: generate a series, serialize it, and at several teacher-forced
forecast steps near its end run each scope and compute the mechanism statistics; across many
steps of the same series measure the Spearman correlation of ‖y‖ with the forecast's std.
Records go to a JSONL file, one line per series, keyed by a hash of everything that defines
the record (family, seed, the series text, steps, scopes, statistic parameters, model): a
rerun skips records already there and never reuses a record made with other inputs. The
series run on the sweep machinery (:mod:`tl_jacobian_scopes.sweep`): under ``torchrun
--nproc_per_node N -m tl_jacobian_scopes.timeseries.study ...`` they are shared out over N
processes and rank 0 merges them and writes the summary. Then a
summary with 95% confidence intervals over seeds is written (``summary.md``, ``summary.json``).

Example::

    tl-jacobian-scopes-timeseries --seeds 20 --out timeseries-study
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import DataFileError, OptionError, ScopeError
from ..progress import Progress
from ..results.files import strict_json_value
from ..sweep.distributed import environment_ranks, local_device, process_group
from ..sweep.records import Layout, load_done, refuse_smaller_summary
from ..sweep.records import record_key as sweep_record_key
from ..sweep.runner import run_items
from ..sweep.sharding import Item
from .forecast import FORECAST_SCOPES, ForecastMatrix, candidate_paths, forecast_distributions, forecast_scope, token_map
from .generators import FAMILIES
from .mechanism import spearman
from .serialize import serialize

#: Bump when a record's content changes meaning (old records are then not reused).
RECORD_VERSION = 1
STATS = ("shape_partial", "level_partial", "shape_given_level", "naive_raw", "recency", "recent_share",
         "recent_chance", "knn_lift", "knn_share", "knn_chance")
FORECAST_STATS = ("parrot_agree", "parrot_prob", "parrot_error", "model_error", "persistence_error")


def record_key(inputs: dict[str, Any]) -> str:
    """A hash of a record's inputs and parameters (canonical JSON)."""
    return sweep_record_key(inputs)


def plan_steps(n: int, n_steps: int, spacing: int) -> list[int]:
    """Teacher-forced forecast steps near the end: ``n-1, n-1-spacing, ...`` (oldest first)."""
    return sorted(n - 1 - spacing * i for i in range(n_steps))


def run_series(model: Any, family: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One record: mechanism statistics per scope and step, and the ‖y‖–std correlation."""
    from ..models.access import ModelAccess

    start = time.time()
    x = FAMILIES[family](args.length, seed=seed)  # type: ignore[operator]
    s = serialize(x, digits=args.digits)
    steps = plan_steps(len(s), args.steps, args.spacing)
    per_scope: dict[str, list[dict[str, Any]]] = {}
    forecasts: Optional[list[Any]] = None
    for scope in args.scopes:
        m = forecast_scope(model, s, scope=scope, steps=steps, distribution=forecasts is None)
        assert isinstance(m, ForecastMatrix)  # steps= is a list
        if forecasts is None:
            forecasts = [r.forecast for r in m]
        rows = []
        for r, f in zip(m, forecasts):
            r.forecast = f
            st = r.mechanism(dim=args.dim, recency=args.recency, k=args.k).to_dict()
            rows.append({"step": r.step, **st, "value_scores": [round(float(v), 6) for v in r.value_scores]})
        per_scope[scope] = rows
    # ‖y‖ against the forecast's std over many steps of the series (distributions only: cheap).
    access = ModelAccess(model)
    tmap = token_map(access, s)
    many = sorted(set(np.linspace(args.dim + args.recency + 3, len(s) - 1, args.ynorm_steps).astype(int).tolist()))
    dists, norms = forecast_distributions(access, tmap.ids, [int(tmap.first[i]) - 1 for i in many],
                                          candidate_paths(access, s.digits, s.sep))
    stds = []
    for probs, _ in dists:
        mean = (probs * np.arange(len(probs))).sum()
        stds.append(float(np.sqrt((probs * (np.arange(len(probs)) - mean) ** 2).sum())))
    assert forecasts is not None  # at least one scope ran
    return {
        "steps": steps,
        "forecasts": [{"step": st, "true_value": f.true_value, "mean": float((f.probs * f.values).sum()),
                       "std": float(f.std / abs(s.scale)), "mode": f.mode_value, "mass": f.mass, "y_norm": f.y_norm}
                      for st, f in zip(steps, forecasts)],
        "scopes": per_scope,
        "ynorm_std": {"steps": many, "y_norm": norms, "std": stds, "spearman": spearman(norms, stds)},
        "seconds": time.time() - start,
    }


def _load(path: Path) -> dict[str, dict[str, Any]]:
    """The records of ``path`` and of its part files (left by an unfinished sweep), by key."""
    return load_done(Layout(path.parent, path.stem))


def _ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95% t-interval over seeds (NaNs dropped)."""
    from scipy.stats import t

    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    if len(v) == 1:
        return {"mean": float(v[0]), "lo": None, "hi": None, "n": 1}
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half), "n": len(v)}


def _step_mean(rows: list[dict[str, Any]], stat: str) -> float:
    vals = [float(r[stat]) for r in rows if r.get(stat) is not None and math.isfinite(float(r[stat]))]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(records: Sequence[dict[str, Any]], scopes: Sequence[str], families: Sequence[str]) -> dict[str, Any]:
    """Per family and scope: each statistic averaged over a series' steps, then over seeds (95% CI)."""
    out: dict[str, Any] = {}
    for fam in families:
        recs = [r for r in records if r["family"] == fam]
        fam_out: dict[str, Any] = {"n_seeds": len(recs)}
        for scope in scopes:
            fam_out[scope] = {st: _ci([_step_mean(r["result"]["scopes"][scope], st) for r in recs]) for st in STATS}
        first = scopes[0]
        fam_out["forecast"] = {st: _ci([_step_mean(r["result"]["scopes"][first], st) for r in recs]) for st in FORECAST_STATS}
        fam_out["ynorm_std_spearman"] = _ci([r["result"]["ynorm_std"]["spearman"] for r in recs])
        out[fam] = fam_out
    return out


def _fmt(c: dict[str, Any], digits: int = 2) -> str:
    if c["mean"] is None:
        return "—"
    if c["lo"] is None:
        return f"{c['mean']:.{digits}f}"
    return f"{c['mean']:.{digits}f} [{c['lo']:.{digits}f}, {c['hi']:.{digits}f}]"


def summary_markdown(summary: dict[str, Any], scopes: Sequence[str], meta: dict[str, Any]) -> str:
    lines = [
        "# Time-series mechanism study",
        "",
        f"Model {meta['model']}; {meta['length']} values per series, {meta['steps']} teacher-forced forecast steps "
        f"per series (spacing {meta['spacing']}), motif dim {meta['dim']}, recency window {meta['recency']}, "
        f"k={meta['k']}. Each cell: mean over seeds of the per-series mean over steps, with a 95% t-interval over "
        "seeds. Definitions: docs/method.md §8.",
        f"Environment: {meta['env']}.",
        "",
    ]
    cols = ("shape_partial", "level_partial", "shape_given_level", "naive_raw", "recency", "recent_share", "knn_lift")
    lines += ["| family | seeds | scope | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for fam, f in summary.items():
        for scope in scopes:
            lines.append(f"| {fam} | {f['n_seeds']} | {scope} | " + " | ".join(_fmt(f[scope][c]) for c in cols) + " |")
    lines += ["", "Recent-window chance share (values with lag ≤ recency window / all values with a motif): "
              + ", ".join(f"{fam} {_fmt(f[scopes[0]]['recent_chance'], 3)}" for fam, f in summary.items()), ""]
    lines += ["| family | parrot agrees with mode (gap ≤ 2) | model P(parrot) | parrot abs. error | model-mean abs. error "
              "| persistence abs. error | Spearman(‖y‖, std) |", "|---|---|---|---|---|---|---|"]
    for fam, f in summary.items():
        fc = f["forecast"]
        lines.append(f"| {fam} | {_fmt(fc['parrot_agree'])} | {_fmt(fc['parrot_prob'], 3)} | {_fmt(fc['parrot_error'], 1)} | "
                     f"{_fmt(fc['model_error'], 1)} | {_fmt(fc['persistence_error'], 1)} | {_fmt(f['ynorm_std_spearman'])} |")
    lines += ["", "Errors are in written units (two digits: the series' range maps onto 15..85)."]
    return "\n".join(lines) + "\n"


def timing(model: Any, length: int = 180, repeats: int = 1) -> dict[str, Any]:
    """Seconds per forecast scope on a ``length``-value Lorenz series: value-level vs token-level."""
    from ..models.access import ModelAccess
    from ..scopes.api import fisher_scope, semantic_scope, temperature_scope

    s = serialize(FAMILIES["lorenz"](length, seed=0))  # type: ignore[operator]
    ids = token_map(ModelAccess(model), s).ids
    out: dict[str, Any] = {"n_values": length, "n_tokens": len(ids)}
    for scope in FORECAST_SCOPES:
        fn = {"temperature": temperature_scope, "semantic": semantic_scope, "fisher": fisher_scope}[scope]
        token_t, value_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(model, ids, progress=False)
            token_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            forecast_scope(model, s, scope=scope, distribution=False)
            value_t.append(time.perf_counter() - t0)
        out[scope] = {"token_level_s": min(token_t), "value_level_s": min(value_t)}
    t0 = time.perf_counter()
    forecast_scope(model, s, scope="temperature")
    out["temperature_with_distribution_s"] = time.perf_counter() - t0
    return out


def _env() -> str:
    import torch
    import transformers

    from importlib.metadata import PackageNotFoundError, version

    try:
        tl = version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover
        tl = "?"
    return (f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"TransformerLens {tl}, {platform.machine()} CPU, torch threads {torch.get_num_threads()}")


def _summary_records(saved: dict[str, Any]) -> int:
    """How many series (seeds x families) a saved summary.json was made from."""
    return sum(int(fam["n_seeds"]) for fam in saved["summary"].values())


def _parse_seeds(text: str) -> list[int]:
    try:
        if "-" in text:
            a, b = text.split("-")
            return list(range(int(a), int(b) + 1))
        if "," in text:
            return [int(x) for x in text.split(",")]
        return list(range(int(text)))
    except ValueError as exc:
        raise OptionError(f"--seeds takes a count (20), a range (0-19) or a list (0,3,5), got {text!r}.") from exc


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tl-jacobian-scopes-timeseries", description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument("--seeds", default="20", help="a count (20), a range (0-19) or a list (0,3,5)")
    parser.add_argument("--length", type=int, default=120, help="values per series")
    parser.add_argument("--steps", type=int, default=3, help="teacher-forced forecast steps per series")
    parser.add_argument("--spacing", type=int, default=5, help="values between those steps")
    parser.add_argument("--scopes", default=",".join(FORECAST_SCOPES))
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--dim", type=int, default=3, help="motif (delay-embedding) dimension")
    parser.add_argument("--recency", type=int, default=5, help="recency window excluded from the motif statistics")
    parser.add_argument("--k", type=int, default=3, help="nearest motifs for the kNN share")
    parser.add_argument("--ynorm-steps", type=int, default=24, help="steps per series for the ‖y‖–std correlation")
    parser.add_argument("--out", default="timeseries-study",
                        help="output folder (default: ./timeseries-study; the same --out resumes a run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timing", action="store_true", help="also time value- vs token-level scopes (180 values)")
    parser.add_argument("--summary-only", action="store_true", help="summarize the records already there")
    args = parser.parse_args(argv)
    try:
        args.families = [f.strip() for f in args.families.split(",") if f.strip()]
        args.scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        bad = [f for f in args.families if f not in FAMILIES] + [s for s in args.scopes if s not in FORECAST_SCOPES]
        if bad or not args.families or not args.scopes:
            raise OptionError(f"Unknown family or scope {bad}: families {list(FAMILIES)}, scopes {list(FORECAST_SCOPES)}.")
        seeds = _parse_seeds(args.seeds)
        for name in ("length", "steps", "spacing", "ynorm_steps"):
            if getattr(args, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be ≥ 1.")
        if args.length - 1 - args.spacing * (args.steps - 1) < args.dim + args.recency + 3:
            raise OptionError("--length is too short for --steps, --spacing and the motif statistics: raise --length.")
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / ".write-check").write_text("")
            (out / ".write-check").unlink()
        except OSError as exc:
            raise OptionError(f"Cannot write to {str(out)!r} ({exc}): pass a writable --out.") from exc
        path = out / "records.jsonl"
        done = _load(path)
        from ..models.loading import DEFAULT_MODEL_NAME, load_default_model

        model = None if args.summary_only else load_default_model(device=local_device(args.device))
        ranks = environment_ranks()
        model_name = DEFAULT_MODEL_NAME
        meta = {"model": model_name, "length": args.length, "steps": args.steps, "spacing": args.spacing,
                "dim": args.dim, "recency": args.recency, "k": args.k, "env": _env()}
        if args.timing and model is not None and ranks.main:
            result = timing(model)
            result["env"] = meta["env"]
            (out / "timing.json").write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
        planned: list[Item] = []
        for seed in seeds:  # seed-major: an interrupted run leaves every family with about as many seeds
            for fam in args.families:
                s = serialize(FAMILIES[fam](args.length, seed=seed), digits=args.digits)  # type: ignore[operator]
                inputs = {"version": RECORD_VERSION, "family": fam, "seed": seed, "text": s.text, "model": model_name,
                          "steps": plan_steps(len(s), args.steps, args.spacing), "scopes": args.scopes,
                          "dim": args.dim, "recency": args.recency, "k": args.k, "ynorm_steps": args.ynorm_steps}
                planned.append(Item(len(planned), record_key(inputs), (fam, seed, inputs)))
        keys = {item.key for item in planned}
        wanted = {(item.payload[0], item.payload[1]) for item in planned}
        other = [r for k, r in done.items() if k not in keys]
        elsewhere = [r for r in other if (r.get("family"), r.get("seed")) not in wanted]
        if elsewhere and ranks.main:
            print(f"{len(elsewhere)} records in {path} are of seeds or families this run does not ask for "
                  "(--seeds, --families): kept in the file, left out of this summary.", file=sys.stderr)
        if len(other) > len(elsewhere) and ranks.main:
            print(f"{len(other) - len(elsewhere)} records in {path} are of this run's seeds but were made with other "
                  "parameters (--length, --steps, --scopes, ..., or another model): not reused.", file=sys.stderr)
        n_new = sum(item.key in done for item in planned) if args.summary_only else len(planned)
        refuse_smaller_summary(out / "summary.json", _summary_records, n_new,
                               "the --seeds, --families and parameters of that run")
        if not args.summary_only:

            def job(item: Item) -> dict[str, Any]:
                fam, seed, inputs = item.payload
                rec = {"id": item.id, "key": item.key, "family": fam, "seed": seed, "inputs": inputs,
                       "result": run_series(model, fam, seed, args)}
                where = f"rank {ranks.rank}: " if ranks.world > 1 else ""
                print(f"{where}{fam} seed {seed}: {rec['result']['seconds']:.1f}s", file=sys.stderr, flush=True)
                return strict_json_value(rec)  # type: ignore[no-any-return]

            # Records are shared out over the ranks under torchrun (tl_jacobian_scopes.sweep); the per-series
            # lines above are the study's progress, so its own line stays silent.
            with process_group(local_device(args.device)) as ranks, Progress("study", 0, enabled=False):
                done = {r["key"]: r for r in run_items(planned, job, Layout(out, path.stem), ranks,
                                                       desc="study", unit="series").records}
            if not ranks.main:
                return 0
        records = [done[item.key] for item in planned if item.key in done]
        summary = summarize(records, args.scopes, args.families)
        (out / "summary.json").write_text(json.dumps(strict_json_value({"meta": meta, "summary": summary}), indent=2) + "\n")
        (out / "summary.md").write_text(summary_markdown(summary, args.scopes, meta))
        print(summary_markdown(summary, args.scopes, meta))
    except ScopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
