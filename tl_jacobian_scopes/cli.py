"""Command line: ``tl-jacobian-scopes "The capital of France is" --scope fisher``.

``tl-jacobian-scopes app [--model NAME] [--port 7860] [--host 127.0.0.1]`` starts the
interactive web app instead (to explain the prompt "app" itself, end the options with ``--``: ``--scope fisher -- app``).

Prints the prediction being explained and every prompt token with its score and a bar;
``--json PATH`` writes the full result.

Every user error (a bad option, an unwritable output path, a missing device or package)
prints one line ``error: ...`` naming the fix and exits with status 2, before any model is
loaded where possible.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .errors import OptionError, OutputPathError, PositionError, ScopeError
from .results.scope_matrix import ScopeMatrix
from .results.scope_result import ScopeResult
from .scopes.api import SCOPES, resolve_scope

BAR_WIDTH = 40

#: What each diagnostic on the report's parameter line means (docs/method.md §2).
PARAM_LEGEND = {
    "rank": "Fisher eigen-directions of F used ('exact': all of them)",
    "n_probes": "probe vectors v, one backward pass each (vectorized)",
    "trace_F": "tr(F), the Fisher information of the prediction at the explained position",
    "captured_trace": "share of tr(F) in the probes used (1 = exact Fisher)",
    "estimator": "how the exact trace is estimated",
    "samples": "random probes of the stochastic estimate",
    "deflate": "top eigen-directions computed exactly before sampling",
    "seed": "random seed of the probes",
    "y_norm": "||y||, the final hidden state's norm (the model's inverse temperature)",
    "embedding_leaf": "where the token's input vector is perturbed ('residual_input': as it enters the residual stream)",
}


def add_fisher_options(parser: argparse.ArgumentParser) -> None:
    """Fisher's options, shared by every command that runs a scope (read by :func:`_scope_kwargs`)."""
    parser.add_argument("--rank", type=int, help="fisher: number of eigen-directions (default: 1)")
    parser.add_argument("--exact", action="store_true", help="fisher: exact trace (d_model probes)")
    parser.add_argument("--samples", type=int, help="fisher: estimate the exact trace from N random probes (e.g. 24)")
    parser.add_argument("--seed", type=int, help="fisher --samples: random seed (default: 0)")


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
    add_fisher_options(parser)
    parser.add_argument("--positions", help="explain many positions: 'all' or a comma-separated list")
    parser.add_argument("--model", help="a TransformerLens model name (needs the hub; default: embedded SmolLM2)")
    parser.add_argument("--backend", choices=["bridge", "hooked"], help="TransformerLens backend")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--n-devices", type=int, help="split a model larger than one GPU over N GPUs")
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
        lines.extend(f"  {k}: {PARAM_LEGEND[k]}" for k in extras if k in PARAM_LEGEND)
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


def _writable_dir(folder: Path) -> bool:
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:  # os.access says yes to root on a read-only mount; creating a file does not
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def check_output_file(path: Union[str, Path], flag: str = "output") -> Path:
    """Make sure ``path`` can be written, before any computation.

    Raises:
        OutputPathError: ``path`` is a folder, its folder does not exist or is not writable,
            or the file exists read-only.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        suffix = {"--json": ".json", "--html": ".html", "--png": ".png"}.get(flag, "")
        raise OutputPathError(f"{flag} {path} is a folder: give a file name, e.g. {path / 'scope'}{suffix}.")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputPathError(f"{flag} {path}: the folder {parent} {what}: create it first or choose another path.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{flag} {path} exists and is read-only: choose another path or make it writable.")
    if not _writable_dir(parent):
        raise OutputPathError(f"{flag} {path}: the folder {parent} is not writable: choose another path.")
    return path


def check_output_dir(path: Union[str, Path], flag: str = "output folder") -> Path:
    """Create the folder ``path`` if needed and make sure it is writable, before any computation.

    Raises:
        OutputPathError: ``path`` is a file, cannot be created, or is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder: choose another path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{flag} {path} cannot be created ({exc.strerror}): choose another path.") from exc
    if not _writable_dir(path):
        raise OutputPathError(f"{flag} {path} is not writable: choose another path.")
    return path


def error_line(exc: BaseException) -> str:
    """``error: <message>`` on one line (a message's own line breaks become spaces)."""
    return "error: " + " ".join(str(exc).split())


def _parse_positions(text: str) -> Union[str, list[int]]:
    if text.strip().lower() == "all":
        return "all"
    parts = [p.strip() for p in text.split(",")]
    try:
        positions = [int(p) for p in parts]
    except ValueError:
        raise PositionError(
            f"--positions takes 'all' or comma-separated integers such as 3,5,-1, got {text!r}."
        ) from None
    if not positions:
        raise PositionError("--positions is empty: pass 'all' or comma-separated integers such as 3,5.")
    return positions


def _scope_kwargs(args: argparse.Namespace, scope: str) -> dict[str, Any]:
    """The scope's keyword arguments; options that do not apply to ``scope`` are refused."""
    kwargs: dict[str, Any] = {"internals": args.internals}
    if args.no_bos:
        kwargs["prepend_bos"] = False
    if scope == "semantic":
        kwargs.update(target=args.target, contrast=args.contrast)
    elif args.target is not None or args.contrast is not None:
        raise OptionError(f"--target/--contrast apply to the semantic scope, not {scope}: add --scope semantic.")
    fisher_only = [f for f, v in (("--rank", args.rank), ("--exact", args.exact or None),
                                  ("--samples", args.samples), ("--seed", args.seed)) if v is not None]
    if scope != "fisher" and fisher_only:
        verb = "applies" if len(fisher_only) == 1 else "apply"
        raise OptionError(f"{'/'.join(fisher_only)} {verb} to the fisher scope, not {scope}: add --scope fisher.")
    if scope == "fisher":
        if args.rank is not None and (args.exact or args.samples is not None):
            raise OptionError("--rank is for the low-rank estimate; --exact and --samples compute the full trace: pass one.")
        if args.exact and args.samples is not None:
            raise OptionError("--exact and --samples are alternatives (exact trace or its estimate): pass one.")
        if args.rank is not None and args.rank < 1:
            raise OptionError(f"--rank must be at least 1, got {args.rank}.")
        if args.samples is not None and args.samples < 1:
            raise OptionError(f"--samples must be at least 1 (e.g. 24), got {args.samples}.")
        if args.seed is not None and args.samples is None:
            raise OptionError("--seed only applies to the random probes of --samples: add --samples N.")
        kwargs["rank"] = None if (args.exact or args.samples is not None) else (args.rank or 1)
        if args.samples is not None:
            kwargs.update(samples=args.samples, seed=args.seed or 0)
    if args.positions is not None:
        if args.position is not None:
            raise PositionError("Pass either --position (one prediction) or --positions (many), not both.")
        kwargs["positions"] = _parse_positions(args.positions)
    else:
        kwargs["position"] = args.position
    return kwargs


def _check_outputs(args: argparse.Namespace) -> list[tuple[str, str, Path]]:
    """``(flag, method name, path)`` per requested output, every path checked up front."""
    outputs = []
    for flag, path, method in (("--json", args.json, "save_json"), ("--html", args.html, "save_html"),
                               ("--png", args.png, "save_png")):
        if path is None:
            continue
        if args.positions is not None and flag != "--html":
            raise OptionError(f"{flag} is not available with --positions: use --html, or explain one --position.")
        if flag == "--png" and importlib.util.find_spec("matplotlib") is None:
            raise OptionError("--png needs matplotlib: pip install 'tl_jacobian_scopes[plot]' (or use --html).")
        outputs.append((flag, method, check_output_file(path, flag)))
    return outputs


def main(argv: Optional[Sequence[str]] = None, model: Any = None) -> int:
    """Run the command line; returns the exit status (2 for any user error).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        model: An already loaded model to use instead of loading ``--model`` (for tests and
            notebooks; ``--model``, ``--device`` and ``--backend`` are then ignored).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["app"]:
        app_args = _app_parser().parse_args(arguments[1:])
        return report_errors(lambda: _app_main(app_args, model), interrupted="app stopped")
    args = _parser().parse_args(arguments)
    return report_errors(lambda: _main(args, model))


def _app_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-jacobian-scopes app",
        description="A local web app (Gradio) to explore Jacobian Scopes interactively; works offline.",
    )
    parser.add_argument("--model", help="a TransformerLens model name (needs the hub; default: embedded SmolLM2)")
    parser.add_argument("--backend", choices=["bridge", "hooked"], help="TransformerLens backend")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="longest prompt the app explains, in tokens (default: 256; the work budget)")
    parser.add_argument("--max-seconds", type=float, default=5.0,
                        help="longest time one request may hold the model (default: 5; other sessions wait about this long at most)")
    return parser


def _app_main(args: argparse.Namespace, model: Any) -> int:
    from .models.loading import check_backend, check_device, load_model

    if not 0 < args.port < 65536:
        raise OptionError(f"--port must be between 1 and 65535, got {args.port}.")
    check_backend(args.backend)
    check_device(args.device)
    from .app import build_app, launch  # MissingPackageError names the extra to install
    from .app.budget import Budget

    if args.max_tokens < 1:
        raise OptionError(f"--max-tokens must be at least 1, got {args.max_tokens}.")
    if not args.max_seconds > 0:
        raise OptionError(f"--max-seconds must be positive, got {args.max_seconds}.")
    blocks = build_app(model, args.model, args.device,
                       loader=lambda name, device: load_model(name, device=device, backend=args.backend),
                       budget=Budget(max_tokens=args.max_tokens,
                                     max_trace_tokens=min(args.max_tokens, Budget.max_trace_tokens),
                                     max_seconds=args.max_seconds))
    print(f"Jacobian Scopes app on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    launch(blocks, host=args.host, port=args.port)
    return 0


def report_errors(body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run a command's body: a ScopeError becomes one line on stderr and exit code 2, Ctrl-C 130."""
    try:
        return body()
    except ScopeError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def _main(args: argparse.Namespace, model: Any) -> int:
    from .models.loading import check_backend, check_device, load_model

    # Everything that can be checked without the model is checked before loading it.
    scope = args.scope.lower()
    scope_fn = resolve_scope(scope)
    kwargs = _scope_kwargs(args, scope)
    outputs = _check_outputs(args)
    if model is None:
        check_backend(args.backend)
        check_device(args.device)
        placement = {} if args.n_devices is None else {"n_devices": args.n_devices}
        model = load_model(args.model, device=args.device, backend=args.backend, **placement)
    result = scope_fn(model, args.prompt, **kwargs)
    if isinstance(result, ScopeMatrix):
        print(format_matrix(result))
    else:
        print(format_result(result))
    for flag, method, path in outputs:
        try:
            getattr(result, method)(path)
        except OSError as exc:  # checked up front, but the disk can still fill up
            raise OutputPathError(f"{flag} {path} could not be written ({exc}): choose another path.") from exc
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
