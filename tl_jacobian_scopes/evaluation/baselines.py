"""Baseline attributions (SPEC section 4), returned as :class:`ScopeResult` like the scopes.

- ``gradient_x_input``: ``‖∇_{x_t} L ⊙ x_t‖₂``.
- ``integrated_gradients``: from the all-zero embedding, ``steps`` midpoint-Riemann points,
  ``x_t ⊙ mean_α ∇L(α x)`` reduced per token by L2 norm (or by the sum over d).
- ``path_semantic_scope``: the same path with the Semantic objective (the target logit).
- ``random_attribution``: seeded uniform scores.
- ``leave_one_out``: zero one token's embedding, ``KL(p_orig ‖ p_ablated)`` at the position.

``L`` is the log-probability of the target (``objective="logprob"``, i.e. minus the
cross-entropy) or its logit (``"logit"``). Everything runs through the same hooks as the
scopes: ``hook_embed`` in, ``unembed.hook_in`` out.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import ScopeError
from ..models.access import EMBED_HOOK, ModelAccess
from ..models.inputs import Prompt, Target, prepare_tokens, resolve_position, resolve_token
from ..results.scope_result import ScopeResult
from ..scopes import probes as P
from ..scopes.api import make_result
from ..scopes.engine import check_memory, forward_to_final_hidden
from .interventions import ablate_positions

OBJECTIVES = ("logprob", "logit")


def _prepare(model: Any, prompt: Prompt, position: Optional[int], prepend_bos: Optional[bool]):
    access = ModelAccess(model)
    tokens = prepare_tokens(access, prompt, prepend_bos)
    pos = resolve_position(position, tokens.shape[-1])
    check_memory(access, tokens.shape[-1])
    return access, tokens, pos


def _objective_probe(
    access: ModelAccess, target: int, probs: Float[Tensor, "... d_vocab"], objective: str
) -> Float[Tensor, "... d_model"]:
    """``∂L/∂y``: ``w_t`` for the logit; ``w_t - W_U p`` for the log-probability."""
    w = P.semantic_probe(access.W_U, target).to(probs.device)
    if objective == "logit":
        return w.expand(*probs.shape[:-1], -1)
    if objective == "logprob":  # ∂(z_t - logsumexp z)/∂y
        return w - P.mean_unembedding(access.W_U, probs).to(w.device)
    raise ScopeError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")


def _result(scope, access, tokens, pos, scores, probs, target, params) -> ScopeResult:
    return make_result(scope, access, tokens[0], pos, scores, probs, target, params=params)


def final_distribution(
    access: ModelAccess, tokens: Tensor, position: int, fwd_hooks=()
) -> Float[Tensor, "batch d_vocab"]:
    """``p`` at ``position`` for every row of ``tokens``, in float32, without gradients."""
    with access.frozen(), torch.no_grad():
        state = forward_to_final_hidden(access, tokens, perturb=(), extra_hooks=fwd_hooks)
        return torch.softmax(P.logits_at(state.y[:, position], access.W_U, access.b_U), dim=-1)


def gradient_x_input(
    model: Any,
    prompt: Prompt,
    target: Target = None,
    *,
    position: Optional[int] = None,
    objective: str = "logprob",
    prepend_bos: Optional[bool] = None,
) -> ScopeResult:
    """Gradient × input, ``‖∇_{x_t} L ⊙ x_t‖₂`` per token (one forward, one backward).

    Example:
        >>> r = gradient_x_input(model, "The capital of France is")  # doctest: +SKIP
    """
    access, tokens, pos = _prepare(model, prompt, position, prepend_bos)
    target_id = resolve_token(access, target, "target")
    with access.frozen():
        state = forward_to_final_hidden(access, tokens, keep_activations=True)
        y = state.y[0, pos]
        probs = torch.softmax(P.logits_at(y, access.W_U, access.b_U), dim=-1)
        target_id = int(probs.argmax()) if target_id is None else target_id
        v = _objective_probe(access, target_id, probs, objective)
        (grad,) = torch.autograd.grad(y, state.leaves[EMBED_HOOK], grad_outputs=v.to(y))
    x = state.activations[EMBED_HOOK]
    scores = (grad[0].float() * x[0].float()).norm(dim=-1)
    return _result("gxi", access, tokens, pos, scores, probs, target_id, {"objective": objective})


def _integrated(
    access: ModelAccess, tokens: Tensor, pos: int, target: int, steps: int, objectives: tuple[str, ...]
) -> tuple[dict[str, Tensor], Tensor]:
    """IG attributions ``x ⊙ mean_α ∇L(α x)`` ([pos, d_model]) for several objectives, sharing
    the path's forward pass: the ``steps`` points run as one batch."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ScopeError(f"steps must be a positive int, got {steps!r}.")
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint Riemann sum
    captured = {}

    def scale(act: Tensor, hook) -> Tensor:
        captured["x"] = act[0].detach()
        return act * alphas.to(act)[:, None, None]

    batch = tokens.expand(steps, -1)
    check_memory(access, tokens.shape[-1], batch=steps)
    with access.frozen():
        state = forward_to_final_hidden(access, batch, extra_hooks=[(EMBED_HOOK, scale)])
        y = state.y[:, pos]  # [steps, d]
        probs = torch.softmax(P.logits_at(y, access.W_U, access.b_U), dim=-1)
        out = {}
        for i, objective in enumerate(objectives):
            v = _objective_probe(access, target, probs, objective)
            (grad,) = torch.autograd.grad(
                y, state.leaves[EMBED_HOOK], grad_outputs=v.to(y), retain_graph=i + 1 < len(objectives)
            )
            out[objective] = captured["x"].float() * grad.float().mean(dim=0)
    return out, probs


def _reduce(attribution: Tensor, reduce: str) -> Tensor:
    if reduce == "l2":
        return attribution.norm(dim=-1)
    if reduce == "sum":
        return attribution.sum(dim=-1)
    raise ScopeError(f"reduce must be 'l2' or 'sum', got {reduce!r}.")


def integrated_gradients(
    model: Any,
    prompt: Prompt,
    target: Target = None,
    *,
    position: Optional[int] = None,
    steps: int = 16,
    objective: str = "logprob",
    reduce: str = "l2",
    prepend_bos: Optional[bool] = None,
) -> ScopeResult:
    """Integrated gradients from the all-zero embedding (``steps`` midpoint points, one batch).

    Per token: the L2 norm over d of ``x_t ⊙ mean_α ∇L(α x)`` (``reduce="sum"`` for the
    signed sum, Captum's convention).

    Example:
        >>> r = integrated_gradients(model, "The capital of France is", steps=32)  # doctest: +SKIP
    """
    access, tokens, pos = _prepare(model, prompt, position, prepend_bos)
    target_id = resolve_token(access, target, "target")
    full = final_distribution(access, tokens, pos)[0]
    target_id = int(full.argmax()) if target_id is None else target_id
    attributions, _ = _integrated(access, tokens, pos, target_id, steps, (objective,))
    scores = _reduce(attributions[objective], reduce)
    params = {"steps": steps, "objective": objective, "reduce": reduce, "baseline": "zero"}
    return _result("ig", access, tokens, pos, scores, full, target_id, params)


def path_semantic_scope(
    model: Any,
    prompt: Prompt,
    target: Target = None,
    *,
    position: Optional[int] = None,
    steps: int = 16,
    reduce: str = "l2",
    prepend_bos: Optional[bool] = None,
) -> ScopeResult:
    """Path-integrated Semantic Scope: the integrated-gradients path with the Semantic
    objective (the target logit ``w_target · y``)."""
    result = integrated_gradients(
        model, prompt, target, position=position, steps=steps, objective="logit", reduce=reduce, prepend_bos=prepend_bos
    )
    result.scope = "path_semantic"
    return result


def random_attribution(
    model: Any, prompt: Prompt, *, position: Optional[int] = None, seed: int = 0, prepend_bos: Optional[bool] = None
) -> ScopeResult:
    """Seeded uniform random scores for positions up to ``position`` (0 after): the floor."""
    access, tokens, pos = _prepare(model, prompt, position, prepend_bos)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(tokens.shape[-1], generator=generator)
    scores[pos + 1 :] = 0
    probs = final_distribution(access, tokens, pos)[0]
    return _result("random", access, tokens, pos, scores, probs, int(probs.argmax()), {"seed": seed})


def leave_one_out(
    model: Any,
    prompt: Prompt,
    *,
    position: Optional[int] = None,
    replacement: Any = "zero",
    batch_size: int = 32,
    prepend_bos: Optional[bool] = None,
) -> ScopeResult:
    """Occlusion: ablate each token's embedding in turn, score ``KL(p_orig ‖ p_ablated)`` at
    ``position``. Ablations run in batches of ``batch_size`` rows without gradients."""
    access, tokens, pos = _prepare(model, prompt, position, prepend_bos)
    check_memory(access, tokens.shape[-1], batch=batch_size)
    p_orig = final_distribution(access, tokens, pos)[0]
    log_orig = p_orig.clamp_min(1e-30).log()
    scores = torch.zeros(tokens.shape[-1])
    for start in range(0, pos + 1, batch_size):
        ablated = torch.arange(start, min(start + batch_size, pos + 1))
        mask = torch.zeros(len(ablated), tokens.shape[-1], dtype=torch.bool)
        mask[torch.arange(len(ablated)), ablated] = True
        hooks = ablate_positions(mask, replacement, model)
        p_abl = final_distribution(access, tokens.expand(len(ablated), -1), pos, hooks)
        kl = (p_orig * (log_orig - p_abl.clamp_min(1e-30).log())).sum(dim=-1)
        scores[ablated] = kl.float().cpu()
    params = {"replacement": replacement if not isinstance(replacement, Tensor) else "vector"}
    return _result("loo", access, tokens, pos, scores, p_orig, int(p_orig.argmax()), params)
