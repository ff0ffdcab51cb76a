"""The scope sweep: any scope or baseline over a JSONL of prompts, one record per prompt.

Each record holds ``id`` (0-based among the file's non-blank lines), ``line``, ``key`` (a
hash of the prompt and the run's settings), ``params`` (those settings), ``tokens`` (the
prompt's tokens as strings), ``scores``, ``position``, ``prediction`` (the model's top token
and its probability there), ``target`` (and ``contrast``) with their probabilities,
``parameters`` (the scope's own diagnostics, e.g. Fisher's eigenvalues) and ``stderr`` for
stochastic estimates. A prompt that cannot be explained (too long, a target that is not one
token, a position outside it) gets a record with a ``"skipped"`` reason instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Union

from ..environment import environment
from ..errors import OptionError, OutputPathError, PositionError, PromptError, TargetError
from ..results.files import strict_json_value
from ..results.scope_result import ScopeResult
from ..scopes.api import resolve_scope
from .distributed import process_group
from .prompts import Prompt, read_prompts
from .records import Layout, StrictCheck, model_params, record_key
from .runner import run_items
from .sharding import Item

#: Bump when a record's content changes meaning, so that older records are not mixed in.
RECORD_VERSION = 1
#: Per-prompt problems recorded as skipped (every other error stops the sweep).
SKIPPED = (PromptError, TargetError, PositionError)


def sweep_params(model: Any, scope: str, options: dict[str, Any]) -> dict[str, Any]:
    """The settings every record of a scope sweep depends on (stored and hashed into keys)."""
    return {"scope": scope, "options": strict_json_value(options), **model_params(model), "version": RECORD_VERSION}


def _record_of(result: ScopeResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "tokens": list(result.str_tokens),
        "scores": result.scores.tolist(),
        "position": result.position,
        "prediction": {"token": result.predicted_str, "id": result.predicted, "prob": result.predicted_prob},
        "target": {"token": result.target_str, "id": result.target, "prob": result.target_prob},
    }
    if result.contrast is not None:
        record["contrast"] = {"token": result.contrast_str, "id": result.contrast, "prob": result.contrast_prob}
    if result.stderr is not None:
        record["stderr"] = result.stderr.tolist()
    record["parameters"] = result.params
    return strict_json_value(record)  # type: ignore[no-any-return]


def explain_prompt(model: Any, scope: str, prompt: Prompt, options: dict[str, Any]) -> dict[str, Any]:
    """One prompt's record body (without id, key and params), or ``{"skipped": reason}``."""
    fn = resolve_scope(scope)
    kwargs = dict(options)
    for name in ("target", "contrast", "position"):
        if getattr(prompt, name) is not None:
            kwargs[name] = getattr(prompt, name)
    try:
        result = fn(model, prompt.text, progress=False, **kwargs)
    except SKIPPED as exc:
        return {"skipped": " ".join(str(exc).split())}
    assert isinstance(result, ScopeResult)  # one prompt, one position
    return _record_of(result)


def check_limit(limit: Optional[int]) -> None:
    """Refuse a ``limit`` that is not ``None`` or an integer of at least 1 (:class:`OptionError`)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OptionError(f"limit (--limit) must be an integer of at least 1 (the number of prompts), got {limit!r}.")


def check_fields(scope: str, prompts: list[Prompt], data: Path) -> None:
    """Refuse per-prompt targets or contrasts that ``scope`` does not take (:class:`OptionError`)."""
    method = resolve_scope(scope).method
    for field, allowed in (("target", method.targeted), ("contrast", method.contrastive)):
        given = next((p for p in prompts if getattr(p, field) is not None), None)
        if given is not None and not allowed:
            raise OptionError(f"{data}:{given.line}: the {scope} scope takes no {field}: remove the \"{field}\" "
                              "fields, or choose a scope that takes one (e.g. --scope semantic).")


def output_layout(data: Path, out: Union[str, Path]) -> Layout:
    """The records files of a sweep of ``data`` into ``out`` (the folder checked and created).

    Raises:
        OutputPathError: ``out`` cannot be written, or its ``<stem>.jsonl`` is ``data`` itself.
    """
    from ..cli import check_output_dir

    layout = Layout(check_output_dir(out, "--out"), data.stem)
    if layout.merged.resolve() == data.resolve():
        raise OutputPathError(f"--out {out} holds the data file {data.name}, and the sweep writes its records to "
                              f"{layout.merged.name} there: choose another --out folder (e.g. results/).")
    return layout


def check_options(model: Any, scope: str, options: dict[str, Any]) -> None:
    """Refuse run-wide options that would fail every prompt alike, before any record is written
    (a per-prompt problem is recorded as skipped; these are not per-prompt).

    Raises:
        OptionError: ``positions=`` or ``progress=`` (a sweep explains one position per prompt
            and shows its own progress), or a target or contrast the scope does not take.
        TargetError: a target or contrast that is not one token, or both the same token.
        PositionError: a position that is not an int.
    """
    from ..models.access import ModelAccess
    from ..models.inputs import resolve_token
    from ..scopes.driver import NEXT

    for name in ("positions", "progress"):
        if name in options:
            raise OptionError(f"A sweep explains one position per prompt and shows its own progress: drop {name}= "
                              "(pass position=, or a \"position\" per prompt in the data file).")
    method = resolve_scope(scope).method
    tokens = {}
    for name, allowed in (("target", method.targeted), ("contrast", method.contrastive)):
        value = options.get(name)
        if value is None:
            continue
        if not allowed:
            raise OptionError(f"The {scope} scope takes no {name}: drop {name}= (--{name}), or choose a scope that "
                              "takes one (e.g. --scope semantic).")
        tokens[name] = value if name == "target" and value == NEXT else resolve_token(ModelAccess(model), value, name)
    if "target" in tokens and tokens["target"] == tokens.get("contrast"):
        raise TargetError("target and contrast are the same token: their logit difference is 0.")
    position = options.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)):
        raise PositionError(f"position must be an int (negative from the end), got {type(position).__name__}.")


def run(
    model: Any,
    data: Union[str, Path],
    out: Union[str, Path],
    scope: str = "fisher",
    limit: Optional[int] = None,
    **options: Any,
) -> dict[str, Any]:
    """Run (or resume) a scope over every prompt of a JSONL file; under torchrun, shared out.

    Writes ``<out>/<stem>.jsonl`` (one record per prompt, sorted by id) and
    ``<out>/<stem>_summary.json``. Called from ``torchrun`` (``RANK``/``WORLD_SIZE`` set),
    each process must pass the model on its own device (:func:`.distributed.local_device`);
    the records are shared out, and rank 0 merges and summarizes. The output folder must be
    one that every rank sees (a shared filesystem on several machines).

    Args:
        model: A TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        data: A JSONL file of ``{"text": ...}`` objects, each optionally with its own
            ``"target"``, ``"contrast"`` and ``"position"``.
        out: The output folder (created if needed).
        scope: Any name of :data:`tl_jacobian_scopes.SCOPES` (scope or baseline).
        limit: Only the first ``limit`` prompts (default: all).
        **options: The scope's options, e.g. ``rank=4`` for Fisher, ``steps=32`` for IG.

    Returns:
        The summary: counts, seconds, records per second, settings and environment.

    Raises:
        UnknownScopeError: an unknown scope.
        DataFileError: a missing or malformed data file.
        StaleRecordsError: the output folder holds records of another data file or other
            settings (the message names the fix).
        OutputPathError: the output folder cannot be written, or holds the data file.
        OptionError, TargetError, PositionError: options that would fail every prompt.

    Examples:
        >>> import tl_jacobian_scopes as tjs
        >>> import json
        >>> _ = open("data.jsonl", "w").write(json.dumps({"text": "The capital of France is"}) + "\\n")
        >>> model = tjs.load_default_model(device=tjs.sweep.local_device())
        >>> tjs.run_sweep(model, "data.jsonl", "results/", scope="fisher", rank=1)  # doctest: +ELLIPSIS
        {...'n_records': 1, 'n_skipped': 0...}
    """
    scope = resolve_scope(scope).method.name
    check_limit(limit)
    data = Path(data)
    prompts = read_prompts(data)
    check_fields(scope, prompts, data)
    layout = output_layout(data, out)
    check_options(model, scope, options)
    params = sweep_params(model, scope, options)
    # The id is hashed too: a text that appears twice in the file gets two records.
    keys = [record_key({"id": p.id, "prompt": p.inputs(), "params": params}) for p in prompts]
    chosen = prompts[:limit] if limit is not None else prompts
    items = [Item(p.id, keys[p.id], p) for p in chosen]

    def job(item: Item) -> dict[str, Any]:
        prompt: Prompt = item.payload
        return {"id": prompt.id, "line": prompt.line, "key": item.key, "params": params,
                **explain_prompt(model, scope, prompt, options)}

    device = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    with process_group(device) as ranks:
        start = time.perf_counter()
        outcome = run_items(items, job, layout, ranks, StrictCheck(params, keys, data),
                            desc=f"{scope} sweep {data.stem}", unit="prompts")
        seconds = time.perf_counter() - start
    wanted = {item.key for item in items}
    mine = [r for r in outcome.records if r["key"] in wanted]
    # n_records: this run's prompts (a --limit run resumes a prefix); n_records_in_file: every record
    # the folder's merged file holds, so a smaller run's summary never hides the larger file.
    summary = {"data": str(data), "scope": scope, "params": params, "n_records": len(mine),
               "n_skipped": sum("skipped" in r for r in mine), "n_records_in_file": len(outcome.records),
               "limit": limit, "n_computed": outcome.computed,
               "world_size": ranks.world, "seconds": seconds,
               "records_per_second": outcome.computed / seconds if seconds > 0 else None,
               "merge_seconds": outcome.merge_seconds,
               "environment": environment(model)}
    if ranks.main:
        path = layout.folder / f"{data.stem}_summary.json"
        try:
            path.write_text(json.dumps(strict_json_value(summary), indent=2) + "\n")
        except OSError as exc:  # the records are safe; only the summary is missing
            raise OutputPathError(f"Could not write {path} ({exc}): fix that and run the same command again "
                                  "(every record is kept; nothing is recomputed).") from exc
    return summary
