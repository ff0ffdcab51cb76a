"""Faithfulness benchmark: the paper's AOPC protocol over a JSONL prompt set, resumable.

Usage:
    tl-jacobian-scopes-faithfulness ../shared/data/lambada_1000.jsonl --n 300 --out benchmarks/results/faithfulness

For each text: explain position ``T-2`` (the prediction of the last token already in the
text) with target = the model's argmax there; score tokens with every method; ablate each
method's top 5/10/20% (zero embeddings) in one batched forward pass; append the record to
``<out>/<set>.jsonl`` (an interrupted run resumes where it stopped). Then write
``<set>_summary.json``, ``<set>_summary.md`` and ``<set>_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..models.access import ModelAccess
from ..models.inputs import prepare_tokens
from ..scopes.api import fisher_scope, semantic_scope, temperature_scope
from .aopc import FRACTIONS, aopc, candidates, deletion_deltas, loo_percentile
from .baselines import _integrated, final_distribution, gradient_x_input, leave_one_out

METHODS = ("random", "gxi", "ig", "path_semantic", "semantic", "temperature", "fisher", "loo")

# Published AOPC on Llama-3.2-1B, n = 1000 (SPEC section 5), shown beside ours; LOO percentiles
# are the paper's Fisher k = 4 run on LAMBADA.
PUBLISHED_AOPC = {
    "lambada_1000": {"random": -0.261, "ig": -1.095, "gxi": -1.284, "semantic": -1.298,
                     "temperature": -1.317, "fisher": -1.320},
    "iwslt2017_de_en_1000": {"random": -0.298, "ig": -0.935, "gxi": -1.043, "semantic": -1.057,
                             "temperature": -1.093, "fisher": -1.079},
}
PUBLISHED_LOO_PERCENTILE = {
    "lambada_1000": {"fisher": 5.45, "gxi": 5.71, "semantic": 6.55, "temperature": 7.96, "ig": 29.5, "random": 48.9},
}


def evaluate_text(
    model: Any, text: str, methods: Sequence[str] = METHODS, ig_steps: int = 16, seed: int = 0
) -> dict[str, Any]:
    """One prompt of the protocol: every method's scores, Δ(f), AOPC and LOO agreement."""
    access = ModelAccess(model)
    tokens = prepare_tokens(access, text)[0]
    has_bos = len(access.to_tokens(text, prepend_bos=False)[0]) < len(tokens)
    position = len(tokens) - 2
    probs = final_distribution(access, tokens[None], position)[0]
    target = int(probs.argmax())
    scores: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    for method in methods:
        if method == "random":
            scores[method] = torch.rand(len(tokens), generator=generator)
        elif method == "gxi":
            scores[method] = gradient_x_input(model, tokens, target, position=position).scores
        elif method in ("ig", "path_semantic") and method not in scores:
            wanted = tuple(o for m, o in (("ig", "logprob"), ("path_semantic", "logit")) if m in methods)
            attributions, _ = _integrated(access, tokens[None], position, target, ig_steps, wanted)
            if "logprob" in attributions:
                scores["ig"] = attributions["logprob"].norm(dim=-1).cpu()
            if "logit" in attributions:
                scores["path_semantic"] = attributions["logit"].norm(dim=-1).cpu()
        elif method == "semantic":
            scores[method] = semantic_scope(model, tokens, target=target, position=position).scores
        elif method == "temperature":
            scores[method] = temperature_scope(model, tokens, position=position).scores
        elif method == "fisher":
            scores[method] = fisher_scope(model, tokens, rank=1, position=position).scores
        elif method == "loo":
            scores[method] = leave_one_out(model, tokens, position=position).scores
        elif method not in scores:
            raise ValueError(f"unknown method {method!r}: choose from {METHODS}")
    deltas = deletion_deltas(model, tokens, position, target, scores, has_bos)
    record = {
        "n_tokens": len(tokens),
        "position": position,
        "target": access.token_str(target),
        "target_prob": float(probs[target]),
        "deltas": deltas,
        "aopc": {m: aopc(d) for m, d in deltas.items()},
    }
    if "loo" in scores:
        pool = candidates(len(tokens), position, has_bos)
        record["loo_percentile"] = {m: loo_percentile(s, scores["loo"], pool) for m, s in scores.items() if m != "loo"}
    return record


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """AOPC and Δ(f) mean ± SE per method, paired differences against gxi and random, LOO agreement."""
    methods = list(records[0]["aopc"])
    summary: dict[str, Any] = {"n_prompts": len(records), "methods": {}}
    for m in methods:
        values = [r["aopc"][m] for r in records]
        mean, se = _mean_se(values)
        row = {"aopc_mean": mean, "aopc_se": se,
               "delta_means": [statistics.fmean(r["deltas"][m][j] for r in records) for j in range(len(FRACTIONS))]}
        for ref in ("gxi", "random"):
            if ref in methods and ref != m:
                diff = [r["aopc"][m] - r["aopc"][ref] for r in records]
                d_mean, d_se = _mean_se(diff)
                row[f"paired_vs_{ref}"] = {"mean": d_mean, "se": d_se,
                                           "share_better": sum(d < 0 for d in diff) / len(diff)}
        if "random" in methods:
            row["times_random"] = mean / statistics.fmean(r["aopc"]["random"] for r in records)
        loo = [r["loo_percentile"][m] for r in records if m in r.get("loo_percentile", {})]
        if loo:
            row["loo_percentile_mean"], row["loo_percentile_se"] = _mean_se(loo)
        summary["methods"][m] = row
    return summary


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    """A Markdown table, best AOPC first, with the paper's Llama-3.2-1B numbers where published."""
    paper_aopc = PUBLISHED_AOPC.get(title, {})
    paper_loo = PUBLISHED_LOO_PERCENTILE.get(title, {})
    lines = [f"### {title} (n = {summary['n_prompts']})", "",
             "| method | AOPC (mean ± SE) | × random | paired vs G×I (mean ± SE) | better than G×I "
             "| LOO percentile | paper AOPC | paper LOO pct. |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m, row in sorted(summary["methods"].items(), key=lambda kv: kv[1]["aopc_mean"]):
        vs = row.get("paired_vs_gxi")
        lines.append(
            f"| {m} | {row['aopc_mean']:.3f} ± {row['aopc_se']:.3f} | {row.get('times_random', float('nan')):.2f} | "
            + (f"{vs['mean']:+.3f} ± {vs['se']:.3f} | {100 * vs['share_better']:.0f}% | " if vs else "— | — | ")
            + (f"{row['loo_percentile_mean']:.1f} ± {row['loo_percentile_se']:.1f} | "
               if "loo_percentile_mean" in row else "— | ")
            + (f"{paper_aopc[m]:.3f} | " if m in paper_aopc else "— | ")
            + (f"{paper_loo[m]:.2f} |" if m in paper_loo else "— |")
        )
    if paper_aopc:
        lines += ["", "Paper: Llama-3.2-1B, n = 1000 (SPEC section 5); LOO percentiles there use Fisher k = 4."]
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: Path, title: str) -> None:
    """Mean deletion curves Δ(f), f = 0, 0.05, 0.1, 0.2, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, row in sorted(summary["methods"].items(), key=lambda kv: kv[1]["aopc_mean"]):
        ax.plot([0, *FRACTIONS], [0, *row["delta_means"]], marker="o", label=f"{m} ({row['aopc_mean']:.3f})")
    ax.set_xlabel("fraction of tokens ablated (zero embedding)")
    ax.set_ylabel("mean Δ log p(ŷ)")
    ax.set_title(f"{title}: deletion curves (AOPC in legend), n={summary['n_prompts']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _load_records(path: Path, methods: Sequence[str]) -> dict[int, dict]:
    """Records of an earlier (possibly killed) run, by text id.

    A line cut short by a kill is dropped from the file, so the run appends after whole
    records only. A file written with another method list is refused: its records could not
    be summarized together with the new ones.
    """
    if not path.exists():
        return {}
    raw = path.read_text()
    if raw and not raw.endswith("\n"):
        raw = raw[: raw.rfind("\n") + 1]
        path.write_text(raw)
    done: dict[int, dict] = {}
    for line in raw.splitlines():
        if line.strip():
            record = json.loads(line)
            done[record["id"]] = record
    if done:
        found = sorted(next(iter(done.values()))["aopc"])
        if found != sorted(methods):
            raise ValueError(
                f"{path} holds records for methods {found}, not {sorted(methods)}: pass "
                f"--methods {','.join(found)} to resume it, or choose another --out folder"
            )
    return done


def run(
    model: Any,
    data: Path,
    out_dir: Path,
    n: int = 300,
    methods: Sequence[str] = METHODS,
    ig_steps: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the benchmark over the first ``n`` texts of ``data``; write the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(data).stem
    records_path = out_dir / f"{stem}.jsonl"
    done = _load_records(records_path, methods)
    texts = [json.loads(line)["text"] for line in Path(data).read_text().splitlines()[:n]]
    with records_path.open("a") as sink:
        for idx, text in enumerate(tqdm(texts, desc=stem, unit="prompt", initial=0)):
            if idx in done:
                continue
            record = {"id": idx, **evaluate_text(model, text, methods, ig_steps, seed + idx)}
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            done[idx] = record
    records = [done[i] for i in sorted(done) if i < n]
    summary = summarize(records)
    summary.update(data=str(data), methods_run=list(methods), ig_steps=ig_steps)
    (out_dir / f"{stem}_summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / f"{stem}_summary.md").write_text(summary_markdown(summary, stem) + "\n")
    try:
        plot_curves(summary, out_dir / f"{stem}_curves.png", stem)
    except ImportError:
        pass
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tl-jacobian-scopes-faithfulness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", help="JSONL files with one {'text': ...} per line")
    parser.add_argument("--n", type=int, default=300, help="number of texts from each file (default 300)")
    parser.add_argument("--out", default="benchmarks/results/faithfulness", help="output folder")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="a TransformerLens model name (default: embedded SmolLM2)")
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    from ..models.loading import load_model

    model = load_model(args.model, device=args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for data in args.data:
        summary = run(model, Path(data), Path(args.out), args.n, methods, args.ig_steps, args.seed)
        print(summary_markdown(summary, Path(data).stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
