"""``tl-jacobian-scopes-sweep``: a scope or baseline over a JSONL of prompts, resumable, on N processes.

Usage:
    tl-jacobian-scopes-sweep data.jsonl --scope semantic --out results/
    torchrun --nproc_per_node 4 -m tl_jacobian_scopes.sweep data.jsonl --scope fisher --rank 1 --out results/

Writes ``<out>/<stem>.jsonl`` (one record per prompt: tokens, scores, prediction, target,
settings; sorted by id) and ``<out>/<stem>_summary.json``. Under torchrun every process
loads the model on its own device (``cuda:LOCAL_RANK``, or the CPU with the gloo backend),
computes its share of the prompts not yet done into ``<stem>.part-<rank>-of-<world>.jsonl``,
and rank 0 merges. Run the same command again (with any number of processes) to resume;
records made from another data file or with other settings are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..cli import add_fisher_options
from ..scopes.api import SCOPES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-jacobian-scopes-sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="JSONL file: one {'text': ...} per line (optional target, contrast, position)")
    parser.add_argument("--scope", default="fisher", help=f"one of {sorted(SCOPES)} (default: fisher)")
    parser.add_argument("--out", default="results", help="output folder, seen by every rank (default: results)")
    # Not --n: under torchrun that prefix is ambiguous with torchrun's own --nnodes, --nproc-per-node, ...
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N prompts (default: all)")
    parser.add_argument("--target", help="semantic: the token to explain where a prompt gives none")
    parser.add_argument("--contrast", help="semantic: explain target minus this token's logit")
    parser.add_argument("--position", type=int, help="explained position where a prompt gives none (default: last)")
    add_fisher_options(parser)
    parser.add_argument("--no-bos", action="store_true", help="do not prepend BOS")
    parser.add_argument("--model", help="a TransformerLens model name (default: embedded SmolLM2)")
    parser.add_argument("--backend", choices=["bridge", "hooked"], help="TransformerLens backend")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda:LOCAL_RANK when available, else cpu)")
    return parser


def main(argv: Optional[Sequence[str]] = None, model: Any = None) -> int:
    """Run the sweep command line; returns the exit status (2 for any user error).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        model: An already loaded model to use instead of loading ``--model``.
    """
    from ..cli import report_errors

    args = _parser().parse_args(argv)
    return report_errors(lambda: _main(args, model), "interrupted: run the same command again to resume")


def _main(args: argparse.Namespace, model: Any) -> int:
    from ..cli import _scope_kwargs
    from ..models.loading import check_backend, check_device, load_model
    from ..scopes.api import resolve_scope
    from .distributed import environment_ranks, local_device
    from .jobs import check_fields, check_limit, output_layout, run
    from .lock import check_unlocked
    from .prompts import read_prompts

    # Everything that can be checked without the model is checked before loading it.
    scope = resolve_scope(args.scope).method.name
    kwargs = _scope_kwargs(argparse.Namespace(**vars(args), positions=None, internals=False), scope)
    kwargs.pop("internals")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_limit(args.limit)
    check_fields(scope, read_prompts(args.data), Path(args.data))
    layout = output_layout(Path(args.data), args.out)
    ranks = environment_ranks()
    if ranks.world == 1:  # under torchrun rank 0 takes the lock for the job once the group is up
        check_unlocked(layout.folder)  # another sweep in the folder: refused before loading the model
    if model is None:
        check_backend(args.backend)
        device = local_device(args.device)
        check_device(device)
        model = load_model(args.model, device=device, backend=args.backend)
    summary = run(model, args.data, args.out, scope, args.limit, **kwargs)
    if ranks.main:
        print(json.dumps({k: v for k, v in summary.items() if k != "environment"}, indent=2))
        print(f"wrote {Path(args.out) / Path(args.data).stem}.jsonl", file=sys.stderr)
    return 0
