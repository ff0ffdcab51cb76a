"""The three Jacobian scopes (SPEC section 2), one call each, one shared signature.

Every scope is a norm of vector-Jacobian products ``v^T J_t`` with ``J_t = dy/dx_t``,
``x_t`` the input embedding at ``hook_embed`` and ``y`` the final hidden state at
``unembed.hook_in``. One forward pass, then one backward pass per probe (batched).
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ProcessedWeightsError, ProcessedWeightsWarning, ScopeError, TargetError, UnknownScopeError
from ..models.access import EMBED_HOOK, ModelAccess, is_degenerate_norm
from ..models.inputs import Prompt, Target, prepare_tokens, resolve_position, resolve_token
from ..results.scope_result import ScopeResult
from . import probes as P
from .engine import ForwardState, batched_vjp, check_memory, forward_to_final_hidden, probe_chunk_size
from .internals import InternalMaps, assemble, internal_hook_names


def _prepare(model: Any, prompt: Prompt, position: Optional[int], prepend_bos: Optional[bool], internals: bool):
    access = ModelAccess(model)
    if internals:
        ModelAccess(model, required_hooks=tuple(internal_hook_names(access.n_layers)))
    tokens = prepare_tokens(access, prompt, prepend_bos)
    pos = resolve_position(position, tokens.shape[-1])
    check_memory(access, tokens.shape[-1])
    return access, tokens, pos


@dataclass
class Probes:
    """What a scope pushes through the backward pass, and what it reports."""

    vectors: Float[Tensor, "k d_model"]
    weights: Float[Tensor, " k"]
    quadratic: bool
    target: int
    contrast: Optional[int] = None
    params: dict[str, Any] = field(default_factory=dict)


def _explain(
    scope: str,
    access: ModelAccess,
    tokens: Tensor,
    pos: int,
    make_probes: Callable[[Tensor, Tensor], Probes],
    internals: bool,
    progress: Optional[bool] = None,
) -> ScopeResult:
    """Forward once, build the probes from (y, p), push them back, assemble the result."""
    leaf_names = [EMBED_HOOK] + (internal_hook_names(access.n_layers) if internals else [])
    with access.frozen():
        state = forward_to_final_hidden(access, tokens, perturb=leaf_names, keep_activations=internals)
        y = state.y[0, pos]
        probs = _distribution(access, y)
        probes = make_probes(y, probs)
        totals = probe_scores(
            access, state, y, probes.vectors.to(y.device), probes.weights, leaf_names, probes.quadratic, progress
        )
    maps = assemble(access.n_layers, totals, state.activations) if internals else None
    return _result(scope, access, tokens, pos, totals[EMBED_HOOK], probs, probes, maps)


def probe_scores(
    access: ModelAccess,
    state: ForwardState,
    y: Float[Tensor, " d_model"],
    probes: Float[Tensor, "k d_model"],
    weights: Float[Tensor, " k"],
    leaf_names: list[str],
    quadratic: bool,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """``Σ_i w_i ‖v_i^T ∂y/∂a‖²`` per leaf, reduced over the leaf's last dimension.

    With ``quadratic=False`` (one probe, weight 1) the square root is returned: a norm.
    Results have the leaf's shape without batch and last dims, e.g. ``[pos]`` for the
    residual stream or ``[pos, n_heads]`` for ``hook_z``.
    """
    n_tokens = state.y.shape[1]
    chunk = probe_chunk_size(access, n_tokens, probes.shape[0], n_leaves=len(leaf_names))
    n_chunks = -(-probes.shape[0] // chunk)
    inputs = [state.leaves[name] for name in leaf_names]
    weights = weights.float().to(y.device)
    totals: dict[str, Tensor] = {}
    bar = tqdm(
        total=probes.shape[0],
        desc="Fisher probes",
        unit="probe",
        disable=not (progress if progress is not None else n_chunks > 4),
        leave=False,
    )
    with bar:
        for sl, grads in batched_vjp(y, inputs, probes, chunk):
            for name, grad in zip(leaf_names, grads):
                sq = grad[:, 0].float().pow(2).sum(dim=-1)  # [chunk, pos, ...]
                part = torch.einsum("k,k...->...", weights[sl].to(sq.device), sq)
                totals[name] = totals[name] + part if name in totals else part
            bar.update(sl.stop - sl.start)
    if not quadratic:
        totals = {name: t.sqrt() for name, t in totals.items()}
    return totals


def _result(
    scope: str,
    access: ModelAccess,
    tokens: Tensor,
    pos: int,
    scores: Tensor,
    probs: Tensor,
    probes: Probes,
    maps: Optional[InternalMaps] = None,
) -> ScopeResult:
    predicted = int(probs.argmax())
    entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum())
    target, contrast = probes.target, probes.contrast
    return ScopeResult(
        scope=scope,
        scores=scores.detach().float().cpu(),
        tokens=tokens[0].cpu(),
        str_tokens=access.to_str_tokens(tokens[0]),
        position=pos,
        target=target,
        target_str=access.token_str(target),
        target_prob=float(probs[target]),
        predicted=predicted,
        predicted_str=access.token_str(predicted),
        predicted_prob=float(probs[predicted]),
        contrast=contrast,
        contrast_str=None if contrast is None else access.token_str(contrast),
        contrast_prob=None if contrast is None else float(probs[contrast]),
        params={"entropy": entropy, **probes.params},
        model_name=access.model_name,
        layer_scores=None if maps is None else maps.scores["layer"],
        attn_scores=None if maps is None else maps.scores["attn"],
        mlp_scores=None if maps is None else maps.scores["mlp"],
        head_scores=None if maps is None else maps.scores["head"],
        internal_norms={} if maps is None else maps.norms,
    )


def _distribution(access: ModelAccess, y: Tensor) -> Tensor:
    return torch.softmax(P.logits_at(y, access.W_U, access.b_U), dim=-1)


def semantic_scope(
    model: Any,
    prompt: Prompt,
    target: Target = None,
    *,
    contrast: Target = None,
    position: Optional[int] = None,
    prepend_bos: Optional[bool] = None,
    internals: bool = False,
) -> ScopeResult:
    """Semantic Scope: which input tokens move the logit of ``target`` (``s_t = ‖J_t^T w_target‖``).

    Args:
        model: A TransformerLens `HookedTransformer` or `TransformerBridge`.
        prompt: Text, or token ids of shape ``[pos]`` / ``[1, pos]``.
        target: Single-token string (e.g. ``" Paris"``) or token id. Default: the
            model's top prediction at ``position``.
        contrast: Optional second token: explain the logit difference target - contrast.
        position: Explained position (default: last token, i.e. the next-token
            prediction; negative counts from the end).
        prepend_bos: Override the model's BOS setting when tokenizing a string.
        internals: Also compute per-layer, per-head, attention- and MLP-output maps from
            the same backward pass (``layer_scores``, ``head_scores``, ...).

    Returns:
        A :class:`ScopeResult` with one L2-norm score per prompt token.

    Example:
        >>> r = semantic_scope(model, "The capital of France is", target=" Paris")  # doctest: +SKIP
        >>> r.top(3)  # doctest: +SKIP
    """
    access, tokens, pos = _prepare(model, prompt, position, prepend_bos, internals)
    target_id = resolve_token(access, target, "target")
    contrast_id = resolve_token(access, contrast, "contrast")
    if contrast_id is not None and contrast_id == target_id:
        raise TargetError("target and contrast are the same token: their logit difference is 0.")
    if contrast_id is None and access.unembed_centered():  # a logit difference is unaffected
        warnings.warn(
            "W_U was centered (center_unembed=True): Semantic scores explain the target logit "
            "minus the mean logit. Load unprocessed weights for the raw logit, or pass contrast= "
            "(logit differences are unaffected by centering).",
            ProcessedWeightsWarning,
            stacklevel=2,
        )

    def make_probes(y: Tensor, probs: Tensor) -> Probes:
        chosen = int(probs.argmax()) if target_id is None else target_id
        if contrast_id == chosen:
            raise TargetError("contrast equals the model's top prediction, the default target: pass target=.")
        v = P.semantic_probe(access.W_U, chosen, contrast_id)
        return Probes(v[None], torch.ones(1), quadratic=False, target=chosen, contrast=contrast_id)

    return _explain("semantic", access, tokens, pos, make_probes, internals)


def temperature_scope(
    model: Any,
    prompt: Prompt,
    *,
    position: Optional[int] = None,
    prepend_bos: Optional[bool] = None,
    internals: bool = False,
) -> ScopeResult:
    """Temperature Scope: which tokens move the model's confidence ‖y‖ (``s_t = ‖J_t^T ŷ‖``).

    Since ``z = ‖y‖ · W ŷ``, ‖y‖ acts as an inverse temperature. Needs the final norm's
    scale unfolded: a model loaded with ``fold_ln=True`` (or a bridge after
    ``enable_compatibility_mode()``) has constant ‖y‖ and is refused.

    Args:
        model: A TransformerLens `HookedTransformer` or `TransformerBridge`.
        prompt: Text, or token ids.
        position: Explained position (default: last token).
        prepend_bos: Override the model's BOS setting when tokenizing a string.
        internals: Also compute per-layer, per-head, attention- and MLP-output maps from
            the same backward pass (``layer_scores``, ``head_scores``, ...).

    Returns:
        A :class:`ScopeResult`; ``params["y_norm"]`` holds ‖y‖.

    Example:
        >>> r = temperature_scope(model, "12,15,18,21,")  # doctest: +SKIP
    """
    access, tokens, pos = _prepare(model, prompt, position, prepend_bos, internals)
    fix = (
        "Temperature Scope needs the final norm's scale in y, but this model folded it into W_U "
        "(fold_ln=True or enable_compatibility_mode()), so ‖y‖ is constant and every score would "
        "be ~0. Load unprocessed weights: tl_jacobian_scopes.load_default_model(), "
        "HookedTransformer.from_pretrained_no_processing(...), or a TransformerBridge without "
        "enable_compatibility_mode() (or with no_processing=True)."
    )
    if access.final_norm_folded():
        raise ProcessedWeightsError(fix)

    def make_probes(y: Tensor, probs: Tensor) -> Probes:
        if is_degenerate_norm(y):
            raise ProcessedWeightsError(f"‖y‖ = √d_model exactly at position {pos}. {fix}")
        v = P.temperature_probe(y)
        y_norm = float(y.detach().float().norm())
        return Probes(v[None], torch.ones(1), quadratic=False, target=int(probs.argmax()), params={"y_norm": y_norm})

    return _explain("temperature", access, tokens, pos, make_probes, internals)


def fisher_scope(
    model: Any,
    prompt: Prompt,
    *,
    rank: Optional[int] = 1,
    position: Optional[int] = None,
    prepend_bos: Optional[bool] = None,
    internals: bool = False,
    progress: Optional[bool] = None,
) -> ScopeResult:
    """Fisher Scope: which tokens move the whole predictive distribution (``s_t = tr(J_t^T F J_t)``).

    ``F = W^T (diag(p) - p p^T) W`` is the Fisher information of the next-token
    distribution pulled back to y. Scores are quadratic (a KL curvature): do not put them
    on one colour scale with Semantic or Temperature scores.

    Args:
        model: A TransformerLens `HookedTransformer` or `TransformerBridge`.
        prompt: Text, or token ids.
        rank: Number of top eigen-directions of F (the paper's default is 1); ``None``
            for the exact trace (``d_model`` probes, in memory-bounded chunks).
        position: Explained position (default: last token).
        prepend_bos: Override the model's BOS setting when tokenizing a string.
        internals: Also compute per-layer, per-head, attention- and MLP-output maps from
            the same backward pass (``layer_scores``, ``head_scores``, ...).
        progress: Show a progress bar (default: only when many probe chunks are needed).

    Returns:
        A :class:`ScopeResult`; ``params`` holds the rank, the top eigenvalues and the
        share of tr(F) the probes capture.

    Example:
        >>> r = fisher_scope(model, "The capital of France is", rank=None)  # exact  # doctest: +SKIP
    """
    access, tokens, pos = _prepare(model, prompt, position, prepend_bos, internals)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= access.d_model):
        raise ScopeError(
            f"rank must be an int in 1..{access.d_model} (d_model), or None for exact Fisher; got {rank!r}."
        )
    if rank is not None and access.final_norm_folded():
        warnings.warn(
            "The final norm's scale was folded into W_U (fold_ln=True or enable_compatibility_mode()): "
            "this rescales y's coordinates, which changes F's top eigen-directions, so rank-k Fisher "
            "scores differ from those of the raw model. Exact Fisher (rank=None) is invariant.",
            ProcessedWeightsWarning,
            stacklevel=2,
        )

    def make_probes(y: Tensor, probs: Tensor) -> Probes:
        evals, evecs = P.fisher_eigenpairs(P.fisher_matrix(access.W_U, probs))
        k = access.d_model if rank is None else rank
        trace = float(evals.sum())
        params = {
            "rank": "exact" if rank is None else rank,
            "n_probes": k,
            "eigenvalues": evals[: min(k, 16)].tolist(),
            "trace_F": trace,
            "captured_trace": float(evals[:k].sum()) / trace if trace > 0 else 1.0,
        }
        return Probes(evecs[:k], evals[:k], quadratic=True, target=int(probs.argmax()), params=params)

    return _explain("fisher", access, tokens, pos, make_probes, internals, progress)


SCOPES: dict[str, Callable[..., ScopeResult]] = {
    "semantic": semantic_scope,
    "temperature": temperature_scope,
    "fisher": fisher_scope,
}


def resolve_scope(scope: str) -> Callable[..., ScopeResult]:
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


def jacobian_scope(model: Any, prompt: Prompt, scope: str = "fisher", **kwargs: Any) -> ScopeResult:
    """Run a scope by name (``"semantic"``, ``"temperature"`` or ``"fisher"``).

    Example:
        >>> jacobian_scope(model, "The capital of France is", "semantic", target=" Paris")  # doctest: +SKIP
    """
    return resolve_scope(scope)(model, prompt, **kwargs)
