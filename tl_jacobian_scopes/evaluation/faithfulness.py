"""Faithfulness benchmark: the paper's AOPC protocol over a JSONL prompt set, resumable.

Usage:
    tl-jacobian-scopes-faithfulness lambada --n 300 --out faithfulness

``lambada`` is the LAMBADA sample shipped with the package (:mod:`tl_jacobian_scopes.data`);
any other argument is the path of a JSONL file.

For each text: explain position ``T-2`` (the prediction of the last token already in the
text) with target = the model's argmax there; score tokens with every method; ablate each
method's top 5/10/20% (zero embeddings) in one batched forward pass; write the record to
``<out>/<set>.jsonl`` (an interrupted run resumes where it stopped). Then write
``<set>_summary.json``, ``<set>_summary.md`` and ``<set>_curves.png``.

It runs on the sweep machinery (:mod:`tl_jacobian_scopes.sweep`): under
``torchrun --nproc_per_node N -m tl_jacobian_scopes.evaluation.faithfulness ...`` the texts
are shared out over N processes (each with the model on its own device), written to part
files and merged by rank 0, which writes the summary.

Each record carries a key: a hash of its text and of the run's settings (methods, IG
steps, seed, model). A resume reuses only records whose key matches and refuses a records
file made from another data file or with other settings. Texts with fewer than two tokens
(nothing to ablate before the explained position) are recorded as skipped and left out
of the means.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..errors import DataFileError, OptionError, OutputPathError, PromptError, UnknownScopeError
from ..environment import describe, environment
from ..models.access import ModelAccess
from ..models.inputs import prepare_tokens
from ..scopes.api import SCOPES, jacobian_scope
from ..sweep.distributed import environment_ranks, local_device, process_group
from ..sweep.jobs import output_layout
from ..sweep.prompts import read_prompts
from ..sweep.records import Layout, StrictCheck, model_params, refuse_smaller_summary
from ..sweep.records import record_key as sweep_record_key
from ..sweep.runner import run_items
from ..sweep.sharding import Item
from .aopc import FRACTIONS, aopc, candidates, deletion_deltas, loo_percentile
from .baselines import _integrated, final_distribution

METHODS = ("random", "gxi", "ig", "path_semantic", "semantic", "temperature", "fisher", "loo")

# Published AOPC on Llama-3.2-1B, n = 1000 (docs/method.md §5), shown beside ours; LOO percentiles
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


MIN_TEXT_TOKENS = 2  # one token to ablate and one whose prediction is explained


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method list, in order without repeats.

    Raises:
        UnknownScopeError: a name not in :data:`METHODS` (with the closest match).
        OptionError: an empty list.
    """
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",")]
    wanted = list(dict.fromkeys(str(m).strip() for m in methods if str(m).strip()))
    if not wanted:
        raise OptionError(f"No methods given: pass a comma-separated subset of {','.join(METHODS)}.")
    for m in wanted:
        if m not in METHODS:
            close = difflib.get_close_matches(m, METHODS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownScopeError(f"Unknown method {m!r}: choose from {','.join(METHODS)}.{hint}")
    return wanted


def _check_ig_steps(ig_steps: int) -> None:
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise OptionError(f"ig_steps (--ig-steps) must be an integer of at least 1 (e.g. 16), got {ig_steps!r}.")


def too_short(n_tokens: int, has_bos: bool) -> Optional[str]:
    """Why a text cannot be explained by the protocol, or ``None`` when it can.

    The explained position is ``T-2``: with fewer than two text tokens there is nothing
    before it to ablate, every Δ(f) would be 0 and would pull the means towards 0.
    """
    n_text = n_tokens - int(has_bos)
    if n_text < MIN_TEXT_TOKENS:
        return (f"too short: {n_text} text token(s){' after BOS' if has_bos else ''}; the protocol needs "
                f"at least {MIN_TEXT_TOKENS} (one to ablate, one whose prediction is explained)")
    return None


def evaluate_text(
    model: Any, text: str, methods: Sequence[str] = METHODS, ig_steps: int = 16, seed: int = 0
) -> dict[str, Any]:
    """One prompt of the protocol: every method's scores, Δ(f), AOPC and LOO agreement.

    Raises:
        PromptError: the text is empty, longer than the model's context, or has fewer than
            two tokens (the benchmark runner records these as skipped).
        UnknownScopeError: a method not in :data:`METHODS`.
        OptionError: ``ig_steps`` below 1.
    """
    methods = check_methods(methods)
    _check_ig_steps(ig_steps)
    access = ModelAccess(model)
    tokens = prepare_tokens(access, text)[0]
    has_bos = len(access.to_tokens(text, prepend_bos=False)[0]) < len(tokens)
    reason = too_short(len(tokens), has_bos)
    if reason:
        raise PromptError(f"Text {text[:40]!r} is {reason}: pass a longer text.")
    position = len(tokens) - 2
    probs = final_distribution(access, tokens[None], position)[0]
    target = int(probs.argmax())
    scores: dict[str, torch.Tensor] = {}
    # IG and path-Semantic share one path (one batched forward pass); the runner's random
    # ranking keeps its own per-text stream, as in the committed records.
    path = {m: o for m, o in (("ig", "logprob"), ("path_semantic", "logit")) if m in methods}
    if path:
        attributions, _ = _integrated(access, tokens[None], position, target, ig_steps, tuple(path.values()))
        scores.update({m: attributions[o].norm(dim=-1).cpu() for m, o in path.items()})
    for method in methods:
        if method == "random":
            scores[method] = torch.rand(len(tokens), generator=torch.Generator().manual_seed(seed))
        elif method not in scores:
            targeted = {"target": target} if SCOPES[method].method.targeted else {}
            scores[method] = jacobian_scope(model, tokens, method, position=position, **targeted).scores
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
    """AOPC and Δ(f) mean ± SE per method, paired differences against gxi and random, LOO agreement.

    Records with a ``"skipped"`` reason (texts too short to explain, or longer than the
    model's context) are left out of every mean and counted in ``n_skipped``.
    """
    skipped = [r for r in records if "skipped" in r]
    records = [r for r in records if "skipped" not in r]
    summary: dict[str, Any] = {"n_prompts": len(records), "n_skipped": len(skipped), "methods": {}}
    if skipped:
        summary["skipped"] = [{"id": r.get("id"), "reason": r["skipped"]} for r in skipped]
    if not records:
        return summary
    methods = list(records[0]["aopc"])
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
            random_mean = statistics.fmean(r["aopc"]["random"] for r in records)
            row["times_random"] = mean / random_mean if random_mean else float("nan")
        loo = [r["loo_percentile"][m] for r in records if m in r.get("loo_percentile", {})]
        if loo:
            row["loo_percentile_mean"], row["loo_percentile_se"] = _mean_se(loo)
        summary["methods"][m] = row
    return summary


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    """A Markdown table, best AOPC first, with the paper's Llama-3.2-1B numbers where published."""
    paper_aopc = PUBLISHED_AOPC.get(title, {})
    paper_loo = PUBLISHED_LOO_PERCENTILE.get(title, {})
    skipped = summary.get("n_skipped", 0)
    note = f", {skipped} skipped as too short or too long, left out" if skipped else ""
    lines = [f"### {title} (n = {summary['n_prompts']}{note})", "",
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
        lines += ["", "Paper: Llama-3.2-1B, n = 1000 (docs/method.md §5); LOO percentiles there use Fisher k = 4."]
    if "environment" in summary:
        lines += ["", f"Measured with: {describe(summary['environment'])}."]
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: Path, title: str) -> None:
    """Mean deletion curves Δ(f), f = 0, 0.05, 0.1, 0.2, one line per method."""
    from ..views.static import require_matplotlib

    require_matplotlib()
    # A bare Figure draws with its own Agg canvas: the user's pyplot backend is left alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for m, row in sorted(summary["methods"].items(), key=lambda kv: kv[1]["aopc_mean"]):
        ax.plot([0, *FRACTIONS], [0, *row["delta_means"]], marker="o", label=f"{m} ({row['aopc_mean']:.3f})")
    ax.set_xlabel("fraction of tokens ablated (zero embedding)")
    ax.set_ylabel("mean Δ log p(ŷ)")
    ax.set_title(f"{title}: deletion curves (AOPC in legend), n={summary['n_prompts']}", fontsize=9, parse_math=False)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def read_texts(path: Union[str, Path]) -> list[tuple[int, str]]:
    """``(line number, text)`` for every non-blank line of a JSONL file of ``{"text": ...}``.

    Raises:
        DataFileError: a missing or unreadable file, no texts, or a malformed line
            (reported as ``path:line: ...``).
    """
    return [(p.line, p.text) for p in read_prompts(path)]


# Bump when evaluate_text's protocol changes, so that older records are not mixed with newer ones.
PROTOCOL_VERSION = 1


def run_params(model: Any, methods: Sequence[str], ig_steps: int, seed: int) -> dict[str, Any]:
    """The settings a record depends on; stored with every record and hashed into its key."""
    return {"methods": sorted(methods), "ig_steps": ig_steps, "seed": seed, **model_params(model),
            "protocol": PROTOCOL_VERSION}


def record_key(text: str, params: dict[str, Any], text_seed: int) -> str:
    """A hash of the text, the run's settings and the text's own seed (``seed + id``)."""
    return sweep_record_key({"text": text, "params": params, "text_seed": text_seed})


def _methods_hint(old: dict[str, Any], differ: list[str]) -> str:
    if "methods" in differ and old.get("methods"):
        return f" (or pass --methods {','.join(old['methods'])} to resume it)"
    return ""


def records_check(params: dict[str, Any], keys: Sequence[str], data: Path) -> StrictCheck:
    """The check every record read back passes: text ``id`` of ``data``, made with ``params``.

    Any record whose key does not match the text now at its id (another file with the same
    name, an edited file, other methods, ig_steps, seed, model, backend, dtype or protocol
    version) is refused (:class:`~tl_jacobian_scopes.errors.StaleRecordsError`): its numbers
    could not be summarized together with the new ones.
    """
    return StrictCheck(params, keys, data, _methods_hint,
                       " (or, if you know it matches, key it with "
                       "tl_jacobian_scopes.evaluation.faithfulness.adopt_unkeyed_records)")


def adopt_unkeyed_records(
    model: Any,
    data: Union[str, Path],
    records_path: Union[str, Path],
    methods: Sequence[str] = METHODS,
    ig_steps: int = 16,
    seed: int = 0,
) -> int:
    """Add keys to the records of a run made before records were keyed, so that it can resume.

    Only for a records file you know was made from ``data`` with these settings: each
    unkeyed record must have the methods given, and its ``n_tokens`` must equal the length
    of the text now at its id (a cheap check that catches most other files). Returns the
    number of records keyed; the file is replaced atomically.

    Examples:
        >>> adopt_unkeyed_records(model, "lambada_1000.jsonl", "out/lambada_1000.jsonl")  # needs old records  # doctest: +SKIP

    Raises:
        DataFileError: a record that does not fit ``data`` or the methods.
    """
    methods = check_methods(methods)
    _check_ig_steps(ig_steps)
    _check_seed(seed)
    texts = read_texts(data)
    records_path = Path(records_path)
    params = run_params(model, methods, ig_steps, seed)
    access = ModelAccess(model)
    lines = records_path.read_text(encoding="utf-8").split("\n")
    adopted = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record = json.loads(line)
        if "key" in record:
            continue
        idx = record.get("id")
        where = f"{records_path}:{i + 1}"
        if not isinstance(idx, int) or not 0 <= idx < len(texts):
            raise DataFileError(
                f"{where}: record id {idx!r} is not a text of {data}: this file belongs to another data file."
            )
        if sorted(record.get("aopc", {})) != sorted(methods):
            found = sorted(record.get("aopc", {}))
            raise DataFileError(f"{where}: the record has methods {found}, not {sorted(methods)}: pass those.")
        lineno, text = texts[idx]
        n_tokens = len(prepare_tokens(access, text)[0]) if text else 0
        if record.get("n_tokens") != n_tokens:
            raise DataFileError(
                f"{where}: record {idx} has {record.get('n_tokens')} tokens but text {idx} of {data} has {n_tokens}: "
                "the record was made from another file (or another model)."
            )
        record = {"id": idx, "line": lineno, "key": record_key(text, params, seed + idx), "params": params,
                  **{k: v for k, v in record.items() if k != "id"}}
        lines[i] = json.dumps(record)
        adopted += 1
    staging = records_path.with_name(records_path.name + ".adopting")
    staging.write_text("\n".join(lines), encoding="utf-8")
    staging.replace(records_path)
    return adopted


def run(
    model: Any,
    data: Path,
    out_dir: Path,
    n: int = 300,
    methods: Sequence[str] = METHODS,
    ig_steps: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the benchmark over the first ``n`` texts of ``data``; write the summary.

    Raises:
        OptionError: ``n`` or ``ig_steps`` below 1, a negative ``seed``, or an unknown method.
        DataFileError: ``data`` is missing, empty or malformed; the records file belongs to
            another data file or other settings; or no text could be evaluated.
        OutputPathError: ``out_dir`` (or the summary in it) cannot be written.
    """
    methods = check_methods(methods)
    _check_n(n)
    _check_ig_steps(ig_steps)
    _check_seed(seed)
    data = Path(data)
    texts = read_texts(data)
    out_dir = output_layout(data, out_dir).folder  # refuses the folder holding data (the records' name)
    stem = data.stem
    records_path = out_dir / f"{stem}.jsonl"
    params = run_params(model, methods, ig_steps, seed)
    keys = [record_key(text, params, seed + idx) for idx, (_, text) in enumerate(texts)]
    items = [Item(idx, keys[idx], (lineno, text)) for idx, (lineno, text) in enumerate(texts[:n])]
    refuse_smaller_summary(out_dir / f"{stem}_summary.json", lambda old: old["n_prompts"] + old.get("n_skipped", 0),
                           len(items), "--n with at least that many texts")

    def job(item: Item) -> dict[str, Any]:
        lineno, text = item.payload
        head = {"id": item.id, "line": lineno, "key": item.key, "params": params}
        try:
            return {**head, **evaluate_text(model, text, methods, ig_steps, seed + item.id)}
        except PromptError as exc:  # too short or too long: recorded, left out of the means
            return {**head, "skipped": " ".join(str(exc).split())}

    device = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    with process_group(device) as ranks:
        outcome = run_items(items, job, Layout(out_dir, stem), ranks, records_check(params, keys, data),
                            desc=f"faithfulness {stem}", unit="texts")
    done = {r["id"]: r for r in outcome.records}
    records = [done[i] for i in sorted(done) if i < n]
    summary = summarize(records)
    if not summary["n_prompts"]:
        raise DataFileError(
            f"None of the {len(records)} texts of {data} could be evaluated ({records[0]['skipped']}): "
            "pass a file of longer texts."
        )
    summary.update(data=str(data), methods_run=list(methods), ig_steps=ig_steps, seed=seed, model=params["model"],
                   environment=environment(model))
    if not ranks.main:  # rank 0 writes the summary
        return summary
    try:
        (out_dir / f"{stem}_summary.json").write_text(json.dumps(summary, indent=2))
        (out_dir / f"{stem}_summary.md").write_text(summary_markdown(summary, stem) + "\n")
        try:
            plot_curves(summary, out_dir / f"{stem}_curves.png", stem)
        except ImportError:
            pass
    except OSError as exc:  # the records are safe; only the summary is missing
        raise OutputPathError(
            f"Could not write the summary of {stem} in {out_dir} ({exc}): fix that and run the same command "
            "again (every record is kept; nothing is recomputed)."
        ) from exc
    return summary


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise OptionError(f"n (--n) must be an integer of at least 1 (the number of texts to evaluate), got {n!r}.")


def resolve_data(name: str) -> str:
    """``"lambada"``: the shipped LAMBADA sample's path; ``"iwslt"``: refused, naming its source
    (not shipped); anything else: a path, returned as given."""
    from .. import data

    if name.lower() == "lambada":
        return str(data.lambada_path())
    if name.lower() == "iwslt":
        data.iwslt_path("iwslt")  # raises DataFileError naming the source, unless such a file exists here
    return name


def _check_seed(seed: int) -> None:
    # Text i uses seed + i, which torch.Generator must accept.
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise OptionError(f"seed (--seed) must be an integer from 0 to 2**62, got {seed!r}.")


def main(argv: Optional[Sequence[str]] = None, model: Any = None) -> int:
    """Run the benchmark command line; returns the exit status (2 for any user error).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        model: An already loaded model to use instead of loading ``--model``.
    """
    parser = argparse.ArgumentParser(prog="tl-jacobian-scopes-faithfulness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", help="JSONL files with one {'text': ...} per line, or 'lambada' "
                        "(the LAMBADA sample shipped with the package, CC BY 4.0)")
    # --limit: the same under torchrun, where --n is ambiguous with torchrun's own --nnodes, --nproc-per-node, ...
    parser.add_argument("--n", "--limit", dest="n", type=int, default=300,
                        help="number of texts from each file (default 300; --limit under torchrun)")
    parser.add_argument("--out", default="faithfulness",
                        help="output folder (default: ./faithfulness; the same --out resumes a run)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="a TransformerLens model name (default: embedded SmolLM2)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda:LOCAL_RANK when available)")
    args = parser.parse_args(argv)
    from ..cli import report_errors

    return report_errors(lambda: _main(args, model), "interrupted: run the same command again to resume")


def _main(args: argparse.Namespace, model: Any) -> int:
    from ..models.loading import check_device, load_model

    # Every input is checked before the model is loaded.
    methods = check_methods(args.methods)
    _check_n(args.n)
    _check_ig_steps(args.ig_steps)
    _check_seed(args.seed)
    args.data = [resolve_data(d) for d in args.data]
    stems: dict[str, str] = {}
    for data in args.data:
        read_texts(data)
        stem = Path(data).stem
        if stem in stems:
            raise DataFileError(
                f"{stems[stem]} and {data} would share the records file {stem}.jsonl: "
                "rename one, or run them with different --out folders."
            )
        stems[stem] = data
        output_layout(Path(data), args.out)
    if model is None:
        check_device(args.device)
        model = load_model(args.model, device=local_device(args.device))
    for data in args.data:
        summary = run(model, Path(data), Path(args.out), args.n, methods, args.ig_steps, args.seed)
        if environment_ranks().main:
            print(summary_markdown(summary, Path(data).stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
