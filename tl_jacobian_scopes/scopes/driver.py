"""The one driver every scope and baseline runs through.

``run(method, model, prompt, ...)`` validates every input before any forward pass, lists
the *jobs* (one explained prediction each: a prompt row and a position), hands them to the
method's strategy in sub-batches of rows, builds one :class:`ScopeResult` per job, and
returns them in the caller's shape. That shape is decided here and nowhere else:

============================  ========================  =========================
prompt                        ``positions=None``        ``positions=[...]|"all"``
============================  ========================  =========================
one prompt (str, ids)         ``ScopeResult``           ``ScopeMatrix``
a batch (list, ``[b, pos]``)  ``ScopeBatch`` of results  ``ScopeBatch`` of matrices
============================  ========================  =========================
"""

from __future__ import annotations

import difflib
from collections import Counter
import numbers
import sys
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import (NonFiniteError, OptionError, PositionError, PromptError, TargetError, TargetWarning,
                      TokenizationWarning)
from ..models.access import ModelAccess, first_non_finite_parameter
from ..models.hook_names import FINAL_HOOK, internal_hook_names, leaf_hook_names
from ..models.inputs import near_variants, prepare_tokens, resolve_position, resolve_token, tokenization_problem
from ..progress import Progress, silent_progress
from ..results.batch import ScopeBatch
from ..results.scope_matrix import ScopeMatrix
from ..results.scope_result import ScopeResult
from .engine import attention_kernel, check_memory, embedding_leaf, probes_memory
from .output_check import check_model_output

if TYPE_CHECKING:
    from .declarations import Method

#: ``target="next"``: the token that follows the explained position in the text.
NEXT = "next"
PADDING_SIDES = ("right", "left")


@dataclass
class JobOutput:
    """What a strategy returns for one job; the driver turns it into a :class:`ScopeResult`.

    Attributes:
        scores: One score per token of the job's prompt (unpadded).
        probs: The model's next-token distribution at the explained position (float32).
        target: The token whose prediction was explained.
        params: Method parameters and diagnostics to report.
        stderr: Standard error of each score (stochastic estimators only).
        maps: Internal maps (``internals=True``).
    """

    scores: Tensor
    probs: Tensor
    target: int
    params: dict[str, Any] = field(default_factory=dict)
    stderr: Optional[Tensor] = None
    maps: Any = None


@dataclass
class Plan:
    """Validated inputs of one call, listed as jobs ``(row, position)``.

    Attributes:
        access: The model.
        rows: One 1-D tensor of token ids per prompt.
        jobs: ``(row index, position in that row)`` per explained prediction.
        batch: The caller passed a batch (the output is a list).
        multi: The caller passed ``positions=`` (each row gives a :class:`ScopeMatrix`).
        targets: Per job: a token id, ``None`` (the model's top prediction) or ``"next"``.
        contrasts: Per job: a token id or ``None``.
        options: The method's own options, validated, defaults filled in.
        target_texts: Per job: the target as the caller spelled it, when given as text
            (else ``None``); empty when unknown. Used only to warn about likely misspellings.
        contrast_texts: The same for ``contrast=``.
    """

    access: ModelAccess
    rows: list[Tensor]
    jobs: list[tuple[int, int]]
    batch: bool
    multi: bool
    targets: list[Union[int, str, None]]
    contrasts: list[Optional[int]]
    options: dict[str, Any]
    internals: bool = False
    padding_side: str = "right"
    progress: Optional[bool] = None
    #: The call's progress line; strategies advance it by explained predictions (fractions allowed).
    bar: Progress = field(default_factory=silent_progress)
    target_texts: list[Optional[str]] = field(default_factory=list)
    contrast_texts: list[Optional[str]] = field(default_factory=list)
    #: The attention kernel of the call's forward pass (:func:`~.engine.attention_kernel`), decided
    #: once by :func:`run` for the memory guard and the pass itself (None: decided where needed).
    kernel: Optional[str] = None

    def target_for(self, job: int, probs: Tensor) -> int:
        """The explained token of a job, once its distribution is known."""
        target = self.targets[job]
        if isinstance(target, int):
            return target
        row, pos = self.jobs[job]
        if target == NEXT and pos + 1 < len(self.rows[row]):
            return int(self.rows[row][pos + 1])
        return int(probs.argmax())

    def rows_subset(self, rows: Sequence[int]) -> "Plan":
        """The part of the plan that concerns ``rows`` (renumbered from 0), jobs in order."""
        index = {r: i for i, r in enumerate(rows)}
        keep = [j for j, (r, _) in enumerate(self.jobs) if r in index]
        return replace(
            self,
            rows=[self.rows[r] for r in rows],
            jobs=[(index[self.jobs[j][0]], self.jobs[j][1]) for j in keep],
            targets=[self.targets[j] for j in keep],
            contrasts=[self.contrasts[j] for j in keep],
            target_texts=[self.target_texts[j] for j in keep] if self.target_texts else [],
            contrast_texts=[self.contrast_texts[j] for j in keep] if self.contrast_texts else [],
        )


Strategy = Callable[[Plan], list[JobOutput]]


# ---- input validation -----------------------------------------------------------------------


def _is_index(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_batch(prompt: Any) -> bool:
    """A list of prompts or a ``[batch, pos]`` tensor/array (a list of ints is one prompt)."""
    if isinstance(prompt, (Tensor, np.ndarray)):
        return prompt.ndim == 2 and prompt.shape[0] > 1
    if isinstance(prompt, (list, tuple)) and len(prompt) > 0:
        return not all(_is_index(t) for t in prompt)
    return False


def _as_prompts(access: ModelAccess, prompt: Any, batch: bool) -> list[Any]:
    if isinstance(prompt, np.ndarray):
        prompt = torch.from_numpy(prompt) if prompt.dtype.kind in "iu" else prompt.tolist()
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise PromptError("The batch is empty: pass at least one prompt.")
    if not batch:
        return [prompt]
    if not isinstance(prompt, Tensor):
        return list(prompt)
    pad = getattr(access.tokenizer, "pad_token_id", None)
    ends_in_pad = [pad is not None and int(row[-1]) == pad for row in prompt]
    if any(ends_in_pad) and not all(ends_in_pad):
        raise PromptError(
            f"Rows {[i for i, p in enumerate(ends_in_pad) if p]} of this [batch, pos] tensor end in the pad token "
            f"(id {pad}): a padded batch would explain pad tokens. Pass the prompts as a list of strings or of "
            "unpadded token-id lists; the scopes pad batches themselves."
        )
    return list(prompt.unbind(0))


def _positions_for(positions: Any, n_tokens: int) -> list[int]:
    if isinstance(positions, str):
        if positions != "all":
            raise PositionError(f"positions must be a list of ints or 'all', got {positions!r}.")
        return list(range(n_tokens))
    if isinstance(positions, (Tensor, np.ndarray)):
        positions = positions.reshape(-1).tolist()
    if isinstance(positions, (numbers.Number, bool)) or not isinstance(positions, (Sequence, range)):
        raise PositionError(
            f"positions takes a list of ints or 'all', got {positions!r}: for one position pass position={positions!r}."
        )
    wanted = [resolve_position(p, n_tokens) for p in positions]
    if not wanted:
        raise PositionError("positions is empty: pass at least one position.")
    return wanted


def _per_job(value: Any, name: str, n_rows: int, jobs: list[tuple[int, int]], batch: bool, multi: bool) -> list[Any]:
    """Broadcast a per-prompt (batch) or per-position (``positions=``) argument to jobs."""
    if isinstance(value, np.ndarray) or isinstance(value, Tensor) and value.numel() > 1:
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return [value] * len(jobs)
    if batch and multi:
        raise TargetError(f"A list of {name}s is ambiguous for a batch with positions=: pass one {name}.")
    if batch:
        if len(value) != n_rows:
            raise TargetError(f"{len(value)} {name}s for {n_rows} prompts: pass one per prompt.")
        return [value[r] for r, _ in jobs]
    if multi:
        if len(value) != len(jobs):
            raise TargetError(f"{len(value)} {name}s for {len(jobs)} positions: pass one per position.")
        return list(value)
    raise TargetError(
        f"{name}= takes one token for one prompt, got a list of {len(value)}: a list gives one {name} "
        f"per prompt of a batch, or one per position with positions=."
    )


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"{name} must be one of {list(choices)}, got {value!r}.{hint}")


def _check_options(method: "Method", options: Mapping[str, Any], access: ModelAccess) -> dict[str, Any]:
    unknown = [k for k in options if k not in method.options]
    if unknown:
        valid = sorted(method.options)
        close = difflib.get_close_matches(unknown[0], valid + list(_COMMON) + ["batch_size"], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(
            f"{method.name} has no option {unknown[0]!r}; its options are {valid or 'none'}.{hint}"
        )
    # NumPy and 0-d tensor integers become Python ints (torch's seeding and JSON take only those);
    # bools stay bools, and floats are left for the method's own check to refuse.
    merged = {key: _plain_int(value) for key, value in {**method.options, **options}.items()}
    if method.check_options is not None:
        method.check_options(merged, access)
    return merged


def _plain_int(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not (value.is_floating_point() or value.is_complex()) \
            and value.dtype != torch.bool:
        return int(value)
    return int(value) if _is_index(value) and not isinstance(value, int) else value


def check_positive_int(name: str, value: Any, low: int = 1, high: Optional[int] = None) -> None:
    """Raise :class:`OptionError` unless ``low <= value <= high`` is an integer (not a bool)."""
    if not _is_index(value) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"≥ {low}"
        raise OptionError(f"{name} must be an int {bound}, got {value!r}.")


def plan_call(
    method: "Method",
    model: Any,
    prompt: Any,
    *,
    target: Any = None,
    contrast: Any = None,
    position: Any = None,
    positions: Any = None,
    prepend_bos: Optional[bool] = None,
    internals: bool = False,
    padding_side: str = "right",
    progress: Optional[bool] = None,
    options: Mapping[str, Any] = {},
) -> Plan:
    """Validate everything (before any forward pass) and list the jobs."""
    access = ModelAccess(model)
    _check_choice("padding_side", padding_side, PADDING_SIDES)
    for name, value in (("internals", internals), ("prepend_bos", prepend_bos), ("progress", progress)):
        if not isinstance(value, bool) and not (value is None and name != "internals"):
            allowed = "True or False" if name == "internals" else "None, True or False"
            raise OptionError(f"{name} must be {allowed}, got {value!r}.")
    if internals and not method.internals:
        raise OptionError(f"{method.name} has no internal maps: internals=True works with the Jacobian scopes.")
    if internals:
        ModelAccess(model, required_hooks=tuple(internal_hook_names(access.n_layers)))
    if not method.targeted and (target is not None or contrast is not None):
        raise TargetError(f"{method.name} explains the model's top prediction: it takes no target or contrast.")
    if contrast is not None and not method.contrastive:
        raise TargetError(f"{method.name} takes no contrast (only the Semantic scope explains a logit difference).")
    merged = _check_options(method, options, access)
    if positions is not None and position is not None:
        raise PositionError("Pass either position= (one prediction) or positions= (many), not both.")

    batch = is_batch(prompt)
    prompts = _as_prompts(access, prompt, batch)
    rows = [prepare_tokens(access, p, prepend_bos)[0] for p in prompts]
    warn_tokenization(access, prompts, batch, rows)
    multi = positions is not None
    if batch and isinstance(position, (list, tuple)) and len(position) != len(rows):
        raise PositionError(f"{len(position)} positions for {len(rows)} prompts: pass one per prompt.")
    jobs: list[tuple[int, int]] = []
    for r, row in enumerate(rows):
        if multi:
            jobs += [(r, p) for p in _positions_for(positions, len(row))]
            continue
        pos = position[r] if batch and isinstance(position, (list, tuple)) else position
        if isinstance(pos, (list, tuple, range)):
            raise PositionError("position= takes one int; use positions=[...] to explain many positions.")
        jobs.append((r, resolve_position(pos, len(row))))

    raw_targets = _per_job(target, "target", len(rows), jobs, batch, multi)
    targets = [t if isinstance(t, str) and t == NEXT else resolve_token(access, t, "target") for t in raw_targets]
    raw_contrasts = _per_job(contrast, "contrast", len(rows), jobs, batch, multi)
    contrasts = [resolve_token(access, c, "contrast") for c in raw_contrasts]
    for t, c in zip(targets, contrasts):
        if c is not None and c == t:
            raise TargetError("target and contrast are the same token: their logit difference is 0.")
    return Plan(access, rows, jobs, batch, multi, targets, contrasts, merged, internals, padding_side, progress,
                target_texts=[t if isinstance(t, str) and t != NEXT else None for t in raw_targets],
                contrast_texts=[c if isinstance(c, str) else None for c in raw_contrasts])


def job_seed(plan: Plan, job: int, seed: int) -> int:
    """A random seed for one explained prediction, the same whichever batch it runs in."""
    row, pos = plan.jobs[job]
    ids = plan.rows[row][: pos + 1].long().cpu()
    mixed = int((ids * (torch.arange(len(ids)) * 2 + 1)).sum()) * 7919 + pos
    return (seed * 1_000_003 + mixed) % (2**63 - 1)


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn at the user's line: the first frame outside this package (filters match it)."""
    frame, level = sys._getframe(1), 2  # level 2: the function that called warn_at_caller
    while frame is not None and frame.f_globals.get("__name__", "").startswith("tl_jacobian_scopes"):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level)


def warn_tokenization(access: ModelAccess, prompts: Sequence[Any], batch: bool,
                      rows: Optional[Sequence[Tensor]] = None) -> None:
    """One :class:`TokenizationWarning` for the text prompts that cannot re-tokenize to the ids
    they were decoded from (:func:`~..models.inputs.tokenization_problem`); ``rows``: the ids
    the prompts were tokenized to (spares a second tokenization when they decode back)."""
    found = [(i, p, problem) for i, p in enumerate(prompts)
             if isinstance(p, str) and (problem := tokenization_problem(
                 access, p, None if rows is None else rows[i].tolist())) is not None]
    if not found:
        return
    i, text, problem = found[0]
    which = f"Prompt {i} of the batch" if batch else "The prompt"
    more = f" ({len(found) - 1} more prompt(s) likewise)" if len(found) > 1 else ""
    warn_at_caller(
        f"{which} ({text[:40]!r}{'...' if len(text) > 40 else ''}) {problem}{more}: if it was decoded from a "
        "model's token ids, it does not tokenize back to them, and the scope explains other tokens. Pass the "
        "token ids themselves (e.g. model.generate(..., return_type='tokens'), or tjs.explain_generation), or "
        "silence this with warnings.filterwarnings('ignore', category=tjs.TokenizationWarning).",
        TokenizationWarning,
    )


#: A target (or contrast) given as text draws a :class:`TargetWarning` when its probability is
#: below the top prediction's divided by this ratio, and a near spelling of it (leading space,
#: other case) is one token more than this ratio times likelier: ``"Paris"`` (p=0.002) when
#: ``" Paris"`` has p=0.75. Token ids never draw it.
UNLIKELY_RATIO = 10.0


def warn_unlikely_tokens(plan: Plan, outputs: Sequence[JobOutput]) -> None:
    """Warn, once per misspelling, when a target or contrast given as text looks like the wrong
    token (see :data:`UNLIKELY_RATIO`); reuses each job's distribution (no forward pass)."""
    access = plan.access
    variants: dict[str, dict[int, str]] = {}
    problems: dict[tuple[str, str, int], list[tuple[int, int, float, float]]] = {}
    for role, texts, tokens in (("target", plan.target_texts, plan.targets), ("contrast", plan.contrast_texts, plan.contrasts)):
        for job, (text, token) in enumerate(zip(texts, tokens)):
            if text is None or not isinstance(token, int):
                continue
            probs = outputs[job].probs.float()
            p = float(probs[token])
            if not p * UNLIKELY_RATIO < float(probs.max()):
                continue
            if text not in variants:
                variants[text] = near_variants(access, text)
            alternatives = list(variants[text])
            if not alternatives:
                continue
            alt_probs = probs[torch.tensor(alternatives, device=probs.device)]
            best = int(alt_probs.argmax())
            if float(alt_probs[best]) > UNLIKELY_RATIO * p:
                problems.setdefault((role, text, alternatives[best]), []).append(
                    (job, token, p, float(alt_probs[best])))
    for (role, text, alt), hits in problems.items():
        job, token, p, q = hits[0]
        row, pos = plan.jobs[job]
        probs = outputs[job].probs.float()
        top = int(probs.argmax())
        where = f"prompt {row}, position {pos}" if plan.batch else f"position {pos}"
        more = f" The same holds at {len(hits) - 1} more explained prediction(s)." if len(hits) > 1 else ""
        spelled = variants[text][alt]
        warn_at_caller(
            f"{role}={text!r} (token {token}) has p={p:.2g} at {where}, far below the top prediction "
            f"{access.token_str(top)!r} (p={float(probs[top]):.2g}), while {spelled!r} is one token (id {alt}) "
            f"with p={q:.2g}: did you mean {role}={spelled!r}? (Most tokens carry their leading space.){more} "
            f"To explain {text!r} anyway, pass its id ({role}={token}), or silence this with "
            "warnings.filterwarnings('ignore', category=tjs.TargetWarning).",
            TargetWarning,
        )


# ---- running and shaping ----------------------------------------------------------------------


def check_finite(plan: Plan, values: Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` when ``values`` hold NaN or infinity, naming the cause."""
    if bool(torch.isfinite(values).all()):
        return
    bad = first_non_finite_parameter(plan.access.model)
    cause = (f"the parameter {bad!r} holds NaN or infinity: reload the model or repair its weights"
             if bad else "the activations overflowed (weights are finite): try float32, or a shorter prompt")
    raise NonFiniteError(f"The {what} is not finite: {cause}.")


def make_result(method: "Method", plan: Plan, job: int, out: JobOutput) -> ScopeResult:
    """The :class:`ScopeResult` of one job (the only place results are built)."""
    access = plan.access
    row, position = plan.jobs[job]
    tokens = plan.rows[row].cpu()
    probs = out.probs.float()
    predicted = int(probs.argmax())
    contrast = plan.contrasts[job]
    entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum())
    maps = out.maps
    return ScopeResult(
        scope=method.name, score_kind=method.score_kind,
        scores=out.scores.detach().float().cpu(),
        tokens=tokens,
        str_tokens=access.to_str_tokens(tokens),
        position=position,
        target=out.target,
        target_str=access.token_str(out.target),
        target_prob=float(probs[out.target]),
        predicted=predicted,
        predicted_str=access.token_str(predicted),
        predicted_prob=float(probs[predicted]),
        contrast=contrast,
        contrast_str=None if contrast is None else access.token_str(contrast),
        contrast_prob=None if contrast is None else float(probs[contrast]),
        params={"entropy": entropy, **out.params},
        model_name=access.model_name,
        stderr=None if out.stderr is None else out.stderr.detach().float().cpu(),
        layer_scores=None if maps is None else maps.scores["layer"],
        attn_scores=None if maps is None else maps.scores["attn"],
        mlp_scores=None if maps is None else maps.scores["mlp"],
        head_scores=None if maps is None else maps.scores["head"],
        internal_norms={} if maps is None else maps.norms,
    )


def shape_output(plan: Plan, results: list[ScopeResult]) -> Any:
    """Results in the caller's shape: one, a ScopeBatch (a list), a ScopeMatrix, or a ScopeBatch of those."""
    if not plan.multi:
        return ScopeBatch(results) if plan.batch else results[0]
    per_row: dict[int, list[ScopeResult]] = {}
    for (r, _), res in zip(plan.jobs, results):
        per_row.setdefault(r, []).append(res)
    matrices = [ScopeMatrix(per_row[r]) for r in range(len(plan.rows))]
    return ScopeBatch(matrices) if plan.batch else matrices[0]


def run(
    method: "Method",
    model: Any,
    prompt: Any,
    *,
    batch_size: int = 16,
    **kwargs: Any,
) -> Any:
    """Run ``method`` on ``prompt`` and return results in the caller's shape (module docstring).

    ``kwargs`` are the common arguments of :func:`plan_call` plus the method's own options.
    Prompts run ``batch_size`` rows at a time; each sub-batch is one forward pass.
    """
    # Tensors made under the caller's inference_mode() cannot enter autograd: work outside it.
    with torch.inference_mode(False):
        return _run(method, model, prompt, batch_size, kwargs)


def probe_need(method: "Method", plan: Plan, chunks: Sequence[Sequence[int]]) -> dict[str, Any]:
    """``check_memory``'s ``probes=`` and ``probes_hint=`` for a call: the probe vectors of its
    largest sub-batch of rows (probes per job × its jobs × VJP groups, plus their making)."""
    per_job, workspace = method.probe_count(plan.options, plan.access) if method.probe_count else (1, 0)
    per_row = Counter(r for r, _ in plan.jobs)
    worst, jobs = 0, 0
    for rows in chunks:
        counts = [per_row[r] for r in rows]
        worst = max(worst, probes_memory(plan.access, per_job, sum(counts), max(counts), workspace))
        jobs = max(jobs, sum(counts))
    shown = ", ".join(f"{k}={plan.options[k]!r}" for k in ("samples", "rank", "deflate") if k in plan.options)
    return {"probes": worst, "probes_hint": f"{per_job} per prediction, {jobs} predictions at once"
            + (f"; {shown}" if shown else "")}


def plan_run(method: "Method", model: Any, prompt: Any, batch_size: int = 16, **kwargs: Any) -> Plan:
    """Everything :func:`run` checks before its first forward pass, with the same errors: the
    validated :class:`Plan` (``kwargs`` as for :func:`run`)."""
    check_positive_int("batch_size", batch_size)
    common = {k: kwargs.pop(k) for k in list(kwargs) if k in _COMMON}
    return plan_call(method, model, prompt, options=kwargs, **common)


def _run(method: "Method", model: Any, prompt: Any, batch_size: int, kwargs: dict[str, Any]) -> Any:
    plan = plan_run(method, model, prompt, batch_size, **kwargs)
    chunks = [list(range(s, min(s + batch_size, len(plan.rows)))) for s in range(0, len(plan.rows), batch_size)]
    access = plan.access
    plan.kernel = attention_kernel(access, [*leaf_hook_names(access.n_layers, plan.internals), FINAL_HOOK])
    check_memory(access, max(len(row) for row in plan.rows), batch=len(chunks[0]), internals=plan.internals,
                 kernel=plan.kernel, **probe_need(method, plan, chunks))
    # At the first prompt's last explained position: its longest prefix (a one-token prefix cannot
    # show an attention fault, and with positions="all" the first job is position 0).
    first_row = plan.jobs[0][0]
    check_model_output(access, plan.rows[first_row], max(pos for row, pos in plan.jobs if row == first_row),
                       plan.kernel)
    leaf = embedding_leaf(access, plan.rows[0])
    outputs: list[JobOutput] = []
    unit = "positions" if plan.multi else "prompts" if plan.batch else "prediction"
    with Progress(method.label, len(plan.jobs), unit, plan.progress) as plan.bar:
        for rows in chunks:
            sub = plan.rows_subset(rows) if len(chunks) > 1 else plan
            got = method.strategy(sub)
            for out in got:
                check_finite(sub, out.scores, f"{method.name} score")
            outputs += got
            plan.bar.set(len(outputs))  # exact at each sub-batch's end, whatever the strategy reported
    warn_unlikely_tokens(plan, outputs)
    for out in outputs:
        out.params.setdefault("embedding_leaf", leaf.label)
    return shape_output(plan, [make_result(method, plan, j, out) for j, out in enumerate(outputs)])


_COMMON = ("target", "contrast", "position", "positions", "prepend_bos", "internals", "padding_side", "progress")
