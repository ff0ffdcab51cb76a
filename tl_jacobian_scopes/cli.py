"""Command line: ``tl-jacobian-scopes "The capital of France is" --scope fisher``.

Prints the prediction being explained and every prompt token with its score and a bar;
``--json PATH`` writes the full result.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .errors import ScopeError
from .results.scope_matrix import ScopeMatrix
from .results.scope_result import ScopeResult
from .scopes.api import SCOPES, resolve_scope

BAR_WIDTH = 40


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-jacobian-scopes",
        description="Explain a language model's next-token prediction with Jacobian Scopes.",
    )
    parser.add_argument("prompt", help="the text whose prediction to explain")
    parser.add_argument("--scope", default="fisher", help=f"one of {sorted(SCOPES)} (default: fisher)")
    parser.add_argument("--target", help="semantic: the token to explain, e.g. ' Paris' (default: top prediction)")
    parser.add_argument("--contrast", help="semantic: explain target minus this token's logit")
    parser.add_argument("--position", type=int, help="explained position (default: last token)")
    parser.add_argument("--rank", type=int, default=1, help="fisher: number of eigen-directions (default: 1)")
    parser.add_argument("--exact", action="store_true", help="fisher: exact trace (d_model probes)")
    parser.add_argument("--samples", type=int, help="fisher: estimate the exact trace from N random probes (e.g. 24)")
    parser.add_argument("--seed", type=int, default=0, help="fisher --samples: random seed")
    parser.add_argument("--positions", help="explain many positions: 'all' or a comma-separated list")
    parser.add_argument("--model", help="a TransformerLens model name (needs the hub; default: embedded SmolLM2)")
    parser.add_argument("--backend", choices=["bridge", "hooked"], help="TransformerLens backend")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--no-bos", action="store_true", help="do not prepend BOS")
    parser.add_argument("--internals", action="store_true", help="also compute layer, head, attn and MLP maps")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    parser.add_argument("--html", metavar="PATH", help="write a self-contained HTML view (works offline)")
    parser.add_argument("--png", metavar="PATH", help="write a static figure (needs matplotlib)")
    return parser


def format_result(result: ScopeResult) -> str:
    """The text report: prediction, then one line per token with a bar scaled to the max."""
    lines = [f"scope: {result.scope} ({result.score_kind} scores)  model: {result.model_name}"]
    lines.append(
        f"explaining position {result.position} ({result.str_tokens[result.position]!r}): "
        f"top prediction {result.predicted_str!r} p={result.predicted_prob:.3f}"
    )
    if result.scope == "semantic":
        what = f"target {result.target_str!r} p={result.target_prob:.3f}"
        if result.contrast_str is not None:
            what += f" vs contrast {result.contrast_str!r} p={result.contrast_prob:.3f}"
        lines.append(what)
    extras = {k: v for k, v in result.params.items() if isinstance(v, (int, float, str)) and k != "entropy"}
    if extras:
        lines.append("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extras.items()))
    if result.stderr is not None:
        lines.append(f"stochastic estimate: standard errors up to {float(result.stderr.max()):.3g}")
    if result.has_internals:
        heads = ", ".join(f"L{h.layer}H{h.head}={h.score:.3g}" for h in result.top_heads(5))
        lines.append(f"top heads (raw, all positions): {heads}")
    peak = float(result.scores.max()) or 1.0
    width = max(len(repr(t)) for t in result.str_tokens)
    for i, (token, score) in enumerate(zip(result.str_tokens, result.scores.tolist())):
        bar = "█" * round(BAR_WIDTH * score / peak)
        mark = " <- explained" if i == result.position else ""
        lines.append(f"{i:4d} {token!r:<{width}} {score:12.5g} {bar}{mark}")
    return "\n".join(lines)


def format_matrix(matrix: ScopeMatrix, k: int = 3) -> str:
    """One line per explained position: the prediction there and its top-k tokens."""
    lines = [f"scope: {matrix.scope} ({matrix.score_kind} scores) at {len(matrix)} positions"]
    for r in matrix:
        top = ", ".join(f"{t.position}:{t.token!r}={t.score:.3g}" for t in r.top(k))
        lines.append(f"{r.position:4d} {r.str_tokens[r.position]!r:>16} -> {r.target_str!r:<14} {top}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    kwargs: dict = {"position": args.position, "internals": args.internals}
    if args.no_bos:
        kwargs["prepend_bos"] = False
    scope = args.scope.lower()
    if scope == "semantic":
        kwargs.update(target=args.target, contrast=args.contrast)
    elif args.target or args.contrast:
        print(f"error: --target/--contrast apply to the semantic scope, not {scope}", file=sys.stderr)
        return 2
    if scope == "fisher":
        kwargs["rank"] = None if (args.exact or args.samples) else args.rank
        if args.samples:
            kwargs.update(samples=args.samples, seed=args.seed)
    if args.positions:
        kwargs.pop("position")
        kwargs["positions"] = "all" if args.positions == "all" else [int(p) for p in args.positions.split(",")]
    from .models.loading import load_model

    try:
        scope_fn = resolve_scope(scope)  # before loading a model
        model = load_model(args.model, device=args.device, backend=args.backend)
        result = scope_fn(model, args.prompt, **kwargs)
    except ScopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, ScopeMatrix):
        print(format_matrix(result))
    else:
        print(format_result(result))
    for path, save in (
        (args.json, getattr(result, "save_json", None)),
        (args.html, result.save_html),
        (args.png, getattr(result, "save_png", None)),
    ):
        if path and save is None:
            print(f"error: this output is not available with --positions: {path}", file=sys.stderr)
            return 2
        if path:
            save(path)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
