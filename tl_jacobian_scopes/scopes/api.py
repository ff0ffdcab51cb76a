"""The three Jacobian scopes (SPEC section 2), one call each, one shared signature.

Every scope is a norm of vector-Jacobian products ``v^T J_t`` with ``J_t = dy/dx_t``,
``x_t`` the input embedding at ``hook_embed`` and ``y`` the final hidden state at
``unembed.hook_in``. One forward pass, then one backward pass per probe (vectorized).

Each scope takes one prompt (returns a :class:`ScopeResult`), a list of prompts (a batch:
returns a list), and ``positions=`` to explain many positions of a text at once (returns a
:class:`ScopeMatrix`, or a list of them for a batch).
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import PositionError, ProcessedWeightsError, ProcessedWeightsWarning, ScopeError, TargetError, UnknownScopeError
from ..models.access import ModelAccess, is_degenerate_norm
from ..models.inputs import Prompt, Target, prepare_tokens, resolve_position, resolve_token
from ..results.scope_matrix import ScopeMatrix
from ..results.scope_result import ScopeResult
from . import probes as P
from .engine import check_memory
from .internals import internal_hook_names
from .runner import JobOutput, Probes, run_jobs

Positions = Union[None, str, Sequence[int]]


def _is_batch(prompt: Any) -> bool:
    if isinstance(prompt, Tensor):
        return prompt.ndim == 2 and prompt.shape[0] > 1
    if isinstance(prompt, (list, tuple)) and len(prompt) > 0:
        return not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    return False


@dataclass
class _Plan:
    access: ModelAccess
    rows: list[Tensor]
    jobs: list[tuple[int, int]]
    batch: bool
    multi: bool


def _plan(
    model: Any,
    prompt: Any,
    position: Any,
    positions: Positions,
    prepend_bos: Optional[bool],
    internals: bool,
) -> _Plan:
    """Validate everything (before any forward pass) and list the jobs."""
    access = ModelAccess(model)
    if internals:
        ModelAccess(model, required_hooks=tuple(internal_hook_names(access.n_layers)))
    batch = _is_batch(prompt)
    prompts = list(prompt) if batch else [prompt]
    rows = [prepare_tokens(access, p, prepend_bos)[0] for p in prompts]
    if positions is not None and position is not None:
        raise PositionError("Pass either position= (one prediction) or positions= (many), not both.")
    jobs = []
    for r, row in enumerate(rows):
        n = len(row)
        if positions is not None:
            if isinstance(positions, str):
                if positions != "all":
                    raise PositionError(f"positions must be a list of ints or 'all', got {positions!r}.")
                wanted = list(range(n))
            else:
                wanted = [resolve_position(p, n) for p in positions]
            if not wanted:
                raise PositionError("positions is empty: pass at least one position.")
            jobs += [(r, p) for p in wanted]
        else:
            pos = position[r] if batch and isinstance(position, (list, tuple)) else position
            if isinstance(pos, (list, tuple)):
                raise PositionError("position= takes one int; use positions=[...] to explain many positions.")
            jobs.append((r, resolve_position(pos, n)))
    if batch and isinstance(position, (list, tuple)) and len(position) != len(rows):
        raise PositionError(f"{len(position)} positions for {len(rows)} prompts: pass one per prompt.")
    check_memory(access, max(len(r) for r in rows), batch=len(rows))
    return _Plan(access, rows, jobs, batch, positions is not None)


def _per_job(plan: _Plan, value: Any, name: str) -> list[Any]:
    """Broadcast a per-prompt (batch) or per-position (``positions=``) argument to jobs."""
    if not isinstance(value, (list, tuple)):
        return [value] * len(plan.jobs)
    if plan.batch and not plan.multi:
        expected = len(plan.rows)
        per = [value[r] for r, _ in plan.jobs] if len(value) == expected else None
    elif plan.multi and not plan.batch:
        expected = len(plan.jobs)
        per = list(value) if len(value) == expected else None
    else:
        raise TargetError(f"A list of {name}s is ambiguous for a batch with positions=: pass one {name}.")
    if per is None:
        raise TargetError(f"{len(value)} {name}s for {expected} {'prompts' if plan.batch else 'positions'}.")
    return per


def make_result(
    scope: str,
    access: ModelAccess,
    tokens: Tensor,
    position: int,
    scores: Tensor,
    probs: Tensor,
    target: int,
    contrast: Optional[int] = None,
    params: Optional[dict[str, Any]] = None,
    stderr: Optional[Tensor] = None,
    maps: Any = None,
) -> ScopeResult:
    """A :class:`ScopeResult` for one explained prediction (``tokens``: one prompt's ids)."""
    predicted = int(probs.argmax())
    entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum())
    return ScopeResult(
        scope=scope,
        scores=scores.detach().float().cpu(),
        tokens=tokens.cpu(),
        str_tokens=access.to_str_tokens(tokens),
        position=position,
        target=target,
        target_str=access.token_str(target),
        target_prob=float(probs[target]),
        predicted=predicted,
        predicted_str=access.token_str(predicted),
        predicted_prob=float(probs[predicted]),
        contrast=contrast,
        contrast_str=None if contrast is None else access.token_str(contrast),
        contrast_prob=None if contrast is None else float(probs[contrast]),
        params={"entropy": entropy, **(params or {})},
        model_name=access.model_name,
        stderr=stderr,
        layer_scores=None if maps is None else maps.scores["layer"],
        attn_scores=None if maps is None else maps.scores["attn"],
        mlp_scores=None if maps is None else maps.scores["mlp"],
        head_scores=None if maps is None else maps.scores["head"],
        internal_norms={} if maps is None else maps.norms,
    )


def _results(scope: str, plan: _Plan, outputs: list[JobOutput]):
    """ScopeResults in the caller's shape: one, a list, a ScopeMatrix, or a list of those."""
    results = [
        make_result(scope, plan.access, plan.rows[r], pos, out.scores, out.probs, out.probes.target,
                    out.probes.contrast, out.probes.params, out.stderr, out.maps)
        for (r, pos), out in zip(plan.jobs, outputs)
    ]
    if not plan.multi:
        return results if plan.batch else results[0]
    per_row: dict[int, list[ScopeResult]] = {}
    for (r, _), res in zip(plan.jobs, results):
        per_row.setdefault(r, []).append(res)
    matrices = [ScopeMatrix(per_row[r]) for r in range(len(plan.rows))]
    return matrices if plan.batch else matrices[0]


def _in_batches(fn: Callable, model: Any, prompts: Any, batch_size: int, progress: Optional[bool],
                per_prompt: dict[str, Any], **shared: Any) -> list:
    """Run ``fn`` over ``prompts`` ``batch_size`` at a time (progress bar over sub-batches);
    ``per_prompt`` arguments given as lists are sliced along with the prompts."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScopeError(f"batch_size must be a positive int, got {batch_size!r}.")
    for name, value in per_prompt.items():
        if isinstance(value, (list, tuple)) and len(value) != len(prompts):
            raise TargetError(f"{len(value)} values of {name} for {len(prompts)} prompts: pass one per prompt.")
    out: list = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="prompts", unit="batch", disable=progress is False, leave=False):
        chunk = slice(start, start + batch_size)
        kwargs = {k: (v[chunk] if isinstance(v, (list, tuple)) else v) for k, v in per_prompt.items()}
        out.extend(fn(model, prompts[chunk], **kwargs, **shared, batch_size=batch_size, progress=progress))
    return out


def _next_token_target(plan: _Plan, job: int, probs: Tensor) -> int:
    r, pos = plan.jobs[job]
    row = plan.rows[r]
    return int(row[pos + 1]) if pos + 1 < len(row) else int(probs.argmax())


def semantic_scope(
    model: Any,
    prompt: Union[Prompt, Sequence[Prompt]],
    target: Union[Target, str, Sequence[Target]] = None,
    *,
    contrast: Union[Target, Sequence[Target]] = None,
    position: Union[int, Sequence[int], None] = None,
    positions: Positions = None,
    prepend_bos: Optional[bool] = None,
    internals: bool = False,
    padding_side: str = "right",
    batch_size: int = 16,
    progress: Optional[bool] = None,
):
    """Semantic Scope: which input tokens move the logit of ``target`` (``s_t = ‖J_t^T w_target‖``).

    Args:
        model: A TransformerLens `HookedTransformer` or `TransformerBridge`.
        prompt: Text, token ids (``[pos]`` / ``[1, pos]``), or a list of prompts (a batch).
        target: Single-token string (e.g. ``" Paris"``) or token id; ``None`` for the
            model's top prediction; ``"next"`` for the token that follows the explained
            position in the text (teacher forcing; the top prediction at the last token).
            A list gives one per prompt (batch) or one per position (``positions=``).
        contrast: Optional second token: explain the logit difference target - contrast.
        position: Explained position (default: last token, i.e. the next-token
            prediction; negative counts from the end). For a batch, one int for all (counted
            in each prompt) or a list with one per prompt.
        positions: Explain many positions of each prompt at once (a list, or ``"all"``):
            returns a :class:`ScopeMatrix` (positions x tokens) sharing one forward pass.
        prepend_bos: Override the model's BOS setting when tokenizing strings.
        internals: Also compute per-layer, per-head, attention- and MLP-output maps from
            the same backward pass (``layer_scores``, ``head_scores``, ...).
        padding_side: How a batch of unequal prompts is padded (results do not depend on it).
        batch_size: Longer lists of prompts run in sub-batches of this size.
        progress: Progress bar over sub-batches and backward passes (default: when there are many).

    Returns:
        A :class:`ScopeResult` (one L2-norm score per prompt token), a list of them for a
        batch, or a :class:`ScopeMatrix` with ``positions=``.

    Example:
        >>> r = semantic_scope(model, "The capital of France is", target=" Paris")  # doctest: +SKIP
        >>> r.top(3)  # doctest: +SKIP
    """
    if _is_batch(prompt) and len(prompt) > batch_size:
        return _in_batches(semantic_scope, model, prompt, batch_size, progress,
                           dict(target=target, contrast=contrast, position=position), positions=positions,
                           prepend_bos=prepend_bos, internals=internals, padding_side=padding_side)
    plan = _plan(model, prompt, position, positions, prepend_bos, internals)
    access = plan.access
    raw_targets = _per_job(plan, target, "target")
    next_mode = [isinstance(t, str) and t == "next" for t in raw_targets]
    targets = [None if nxt else resolve_token(access, t, "target") for t, nxt in zip(raw_targets, next_mode)]
    contrasts = [resolve_token(access, c, "contrast") for c in _per_job(plan, contrast, "contrast")]
    for t, c in zip(targets, contrasts):
        if c is not None and c == t:
            raise TargetError("target and contrast are the same token: their logit difference is 0.")
    if any(c is None for c in contrasts) and access.unembed_centered():  # logit differences are unaffected
        warnings.warn(
            "W_U was centered (center_unembed=True): Semantic scores explain the target logit "
            "minus the mean logit. Load unprocessed weights for the raw logit, or pass contrast= "
            "(logit differences are unaffected by centering).",
            ProcessedWeightsWarning,
            stacklevel=2,
        )

    def make_probes(job: int, y: Tensor, probs: Tensor) -> Probes:
        chosen = targets[job]
        if chosen is None:
            chosen = _next_token_target(plan, job, probs) if next_mode[job] else int(probs.argmax())
        if contrasts[job] == chosen:
            raise TargetError("contrast equals the default target (the model's top prediction): pass target=.")
        v = P.semantic_probe(access.W_U, chosen, contrasts[job])
        return Probes(v[None], torch.ones(1), quadratic=False, target=chosen, contrast=contrasts[job])

    outputs = run_jobs(access, plan.rows, plan.jobs, make_probes, internals, padding_side, progress)
    return _results("semantic", plan, outputs)


_FOLDED = (
    "Temperature Scope needs the final norm's scale in y, but this model folded it into W_U "
    "(fold_ln=True or enable_compatibility_mode()), so ‖y‖ is constant and every score would "
    "be ~0. Load unprocessed weights: tl_jacobian_scopes.load_default_model(), "
    "HookedTransformer.from_pretrained_no_processing(...), or a TransformerBridge without "
    "enable_compatibility_mode() (or with no_processing=True)."
)


def temperature_scope(
    model: Any,
    prompt: Union[Prompt, Sequence[Prompt]],
    *,
    position: Union[int, Sequence[int], None] = None,
    positions: Positions = None,
    prepend_bos: Optional[bool] = None,
    internals: bool = False,
    padding_side: str = "right",
    batch_size: int = 16,
    progress: Optional[bool] = None,
):
    """Temperature Scope: which tokens move the model's confidence ‖y‖ (``s_t = ‖J_t^T ŷ‖``).

    Since ``z = ‖y‖ · W ŷ``, ‖y‖ acts as an inverse temperature. Needs the final norm's
    scale unfolded: a model loaded with ``fold_ln=True`` (or a bridge after
    ``enable_compatibility_mode()``) has constant ‖y‖ and is refused.

    Args:
        model: A TransformerLens `HookedTransformer` or `TransformerBridge`.
        prompt: Text, token ids, or a list of prompts (a batch).
        position: Explained position (default: last token).
        positions: Many positions at once (a list or ``"all"``): returns a :class:`ScopeMatrix`.
        prepend_bos: Override the model's BOS setting when tokenizing strings.
        internals: Also compute per-layer, per-head, attention- and MLP-output maps from
            the same backward pass (``layer_scores``, ``head_scores``, ...).
        padding_side: How a batch of unequal prompts is padded (results do not depend on it).
        batch_size: Longer lists of prompts run in sub-batches of this size.
        progress: Progress bar over sub-batches and backward passes.

    Returns:
        A :class:`ScopeResult` (``params["y_norm"]`` holds ‖y‖), a list, or a :class:`ScopeMatrix`.

    Example:
        >>> r = temperature_scope(model, "12,15,18,21,")  # doctest: +SKIP
    """
    if _is_batch(prompt) and len(prompt) > batch_size:
        return _in_batches(temperature_scope, model, prompt, batch_size, progress, dict(position=position),
                           positions=positions, prepend_bos=prepend_bos, internals=internals,
                           padding_side=padding_side)
    plan = _plan(model, prompt, position, positions, prepend_bos, internals)
    if plan.access.final_norm_folded():
        raise ProcessedWeightsError(_FOLDED)

    def make_probes(job: int, y: Tensor, probs: Tensor) -> Probes:
        if is_degenerate_norm(y):
            raise ProcessedWeightsError(f"‖y‖ = √d_model exactly at position {plan.jobs[job][1]}. {_FOLDED}")
        y_norm = float(y.detach().float().norm())
        return Probes(P.temperature_probe(y)[None], torch.ones(1), quadratic=False,
                      target=int(probs.argmax()), params={"y_norm": y_norm})

    outputs = run_jobs(plan.access, plan.rows, plan.jobs, make_probes, internals, padding_side, progress)
    return _results("temperature", plan, outputs)


def fisher_scope(
    model: Any,
    prompt: Union[Prompt, Sequence[Prompt]],
    *,
    rank: Optional[int] = 1,
    samples: Optional[int] = None,
    deflate: int = 8,
    seed: int = 0,
    position: Union[int, Sequence[int], None] = None,
    positions: Positions = None,
    prepend_bos: Optional[bool] = None,
    internals: bool = False,
    padding_side: str = "right",
    batch_size: int = 16,
    progress: Optional[bool] = None,
):
    """Fisher Scope: which tokens move the whole predictive distribution (``s_t = tr(J_t^T F J_t)``).

    ``F = W^T (diag(p) - p p^T) W`` is the Fisher information of the next-token
    distribution pulled back to y. Scores are quadratic (a KL curvature): do not put them
    on one colour scale with Semantic or Temperature scores.

    Three ways to compute it:

    - ``rank=k`` (default 1, as in the paper): the sum over the top-k eigen-directions of F
      (k probes).
    - ``rank=None``: the exact trace (``d_model`` probes, in memory-bounded chunks).
    - ``rank=None, samples=m``: an unbiased stochastic estimate of the exact trace from
      ``m`` random probes in output space (``a = A^T z``, ``A^T A = F``, Rademacher ``z``),
      with the top ``deflate`` eigen-directions computed exactly and removed from the
      random probes (lower variance). ``result.stderr`` holds each score's standard error.
      Reproducible through ``seed``.

    Args:
        model: A TransformerLens `HookedTransformer` or `TransformerBridge`.
        prompt: Text, token ids, or a list of prompts (a batch).
        rank: Number of top eigen-directions of F; ``None`` for the exact trace.
        samples: With ``rank=None``: estimate the trace from this many random probes.
        deflate: With ``samples``: eigen-directions handled exactly (default 8).
        seed: With ``samples``: random seed.
        position: Explained position (default: last token).
        positions: Many positions at once (a list or ``"all"``): returns a :class:`ScopeMatrix`.
        prepend_bos: Override the model's BOS setting when tokenizing strings.
        internals: Also compute per-layer, per-head, attention- and MLP-output maps from
            the same backward pass (``layer_scores``, ``head_scores``, ...).
        padding_side: How a batch of unequal prompts is padded (results do not depend on it).
        batch_size: Longer lists of prompts run in sub-batches of this size.
        progress: Progress bar over sub-batches and backward passes (default: when there are many).

    Returns:
        A :class:`ScopeResult` (``params`` holds the rank, the top eigenvalues and the share
        of tr(F) the exact probes capture), a list, or a :class:`ScopeMatrix`.

    Example:
        >>> r = fisher_scope(model, "The capital of France is", rank=None)  # exact  # doctest: +SKIP
        >>> r = fisher_scope(model, "The capital of France is", rank=None, samples=64)  # doctest: +SKIP
    """
    access = ModelAccess(model)
    d = access.d_model
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= d):
        raise ScopeError(f"rank must be an int in 1..{d} (d_model), or None for exact Fisher; got {rank!r}.")
    if samples is not None:
        if rank is not None:
            raise ScopeError("samples= estimates the exact trace: pass rank=None with it.")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ScopeError(f"samples must be an int ≥ 2, got {samples!r}.")
        if isinstance(deflate, bool) or not isinstance(deflate, int) or not 0 <= deflate < d:
            raise ScopeError(f"deflate must be an int in 0..{d - 1}, got {deflate!r}.")
    if _is_batch(prompt) and len(prompt) > batch_size:
        return _in_batches(fisher_scope, model, prompt, batch_size, progress, dict(position=position),
                           rank=rank, samples=samples, deflate=deflate, seed=seed, positions=positions,
                           prepend_bos=prepend_bos, internals=internals, padding_side=padding_side)
    plan = _plan(model, prompt, position, positions, prepend_bos, internals)
    if rank is not None and access.final_norm_folded():
        warnings.warn(
            "The final norm's scale was folded into W_U (fold_ln=True or enable_compatibility_mode()): "
            "this rescales y's coordinates, which changes F's top eigen-directions, so rank-k Fisher "
            "scores differ from those of the raw model. Exact Fisher (rank=None) is invariant.",
            ProcessedWeightsWarning,
            stacklevel=2,
        )

    def make_probes(job: int, y: Tensor, probs: Tensor) -> Probes:
        target = int(probs.argmax())
        if samples is not None:
            evals, evecs = (P.fisher_eigenpairs(P.fisher_matrix(access.W_U, probs), deflate) if deflate else
                            (torch.zeros(0), torch.zeros(0, d)))
            generator = torch.Generator(device=access.W_U.device).manual_seed(seed + 7919 * job)
            noise = P.fisher_sample_probes(access.W_U, probs, samples, generator)
            if deflate:
                noise = noise - (noise @ evecs.T.to(noise.device)) @ evecs.to(noise.device)
            params = {"rank": "exact", "estimator": "stochastic", "samples": samples, "deflate": deflate,
                      "seed": seed, "eigenvalues": evals.tolist()}
            vectors = torch.cat([evecs.to(noise.device), noise])
            weights = torch.cat([evals, torch.full((samples,), 1.0 / samples)])
            return Probes(vectors, weights, quadratic=True, target=target, params=params, stochastic_from=deflate)
        evals, evecs = P.fisher_eigenpairs(P.fisher_matrix(access.W_U, probs))
        k = d if rank is None else rank
        trace = float(evals.sum())
        params = {
            "rank": "exact" if rank is None else rank,
            "n_probes": k,
            "eigenvalues": evals[: min(k, 16)].tolist(),
            "trace_F": trace,
            "captured_trace": float(evals[:k].sum()) / trace if trace > 0 else 1.0,
        }
        return Probes(evecs[:k], evals[:k], quadratic=True, target=target, params=params)

    outputs = run_jobs(access, plan.rows, plan.jobs, make_probes, internals, padding_side, progress)
    return _results("fisher", plan, outputs)


SCOPES: dict[str, Callable[..., Any]] = {
    "semantic": semantic_scope,
    "temperature": temperature_scope,
    "fisher": fisher_scope,
}


def resolve_scope(scope: str) -> Callable[..., Any]:
    """The scope function for a name, case-insensitive.

    Raises:
        UnknownScopeError: naming the valid scopes and the closest match.
    """
    fn = SCOPES.get(str(scope).lower())
    if fn is None:
        close = difflib.get_close_matches(str(scope).lower(), SCOPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownScopeError(f"Unknown scope {scope!r}: choose one of {sorted(SCOPES)}.{hint}")
    return fn


def jacobian_scope(model: Any, prompt: Any, scope: str = "fisher", **kwargs: Any):
    """Run a scope by name (``"semantic"``, ``"temperature"`` or ``"fisher"``).

    Example:
        >>> jacobian_scope(model, "The capital of France is", "semantic", target=" Paris")  # doctest: +SKIP
    """
    return resolve_scope(scope)(model, prompt, **kwargs)
