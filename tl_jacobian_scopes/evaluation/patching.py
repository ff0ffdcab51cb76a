"""From attribution to a causal claim: patch what a scope points at, and compare a scope's
layer x position map with real activation patching.

The metric is the logit difference ``LD = z[answer] - z[wrong]`` at the last position; a
patch's effect is the fraction of the clean-corrupted gap it restores,
``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)`` (1 = fully restored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from ..errors import PromptError
from ..models.access import ModelAccess
from ..models.inputs import prepare_tokens, resolve_token
from ..results.scope_result import ScopeResult
from ..scopes.engine import forward_to_final_hidden
from ..scopes.probes import semantic_probe
from .interventions import patch_activations


def _pair(model: Any, clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    access = ModelAccess(model)
    a, b = prepare_tokens(access, clean), prepare_tokens(access, corrupted)
    if a.shape != b.shape:
        raise PromptError(
            f"clean and corrupted prompts must have the same number of tokens to patch position by "
            f"position; got {a.shape[-1]} and {b.shape[-1]}."
        )
    return a, b


def logit_difference(model: Any, tokens: Tensor, answer: int, wrong: int, fwd_hooks=()) -> Tensor:
    """``z[answer] - z[wrong]`` at the last position for each row."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1]
    return (logits[:, answer] - logits[:, wrong]).float().cpu()


@dataclass
class PatchOutcome:
    """How much of the clean-corrupted logit difference a patch restored."""

    recovered: float
    ld_clean: float
    ld_corrupted: float
    ld_patched: float
    patched: list


def patch_top(
    model: Any,
    clean: Any,
    corrupted: Any,
    result: ScopeResult,
    k: int = 3,
    answer: Union[str, int, None] = None,
    wrong: Union[str, int, None] = None,
    site: str = "position",
) -> PatchOutcome:
    """Patch the ``k`` sites a scope ranks highest from the clean run into the corrupted one.

    Args:
        model: The model.
        clean, corrupted: Prompts of equal token length.
        result: A scope result (positions ranked by ``scores``; heads by ``head_scores``,
            which needs ``internals=True``).
        k: How many positions or heads to patch (0 patches nothing).
        answer, wrong: The two tokens of the logit difference (default: the result's
            target and contrast).
        site: ``"position"`` patches the input embeddings (``hook_embed``) at the top-k
            positions; ``"head"`` patches the top-k heads' outputs (``hook_z``) everywhere.

    Example:
        >>> r = tjs.semantic_scope(model, clean, target=" Paris", contrast=" Rome", internals=True)  # doctest: +SKIP
        >>> patch_top(model, clean, corrupted, r, k=2).recovered  # doctest: +SKIP
    """
    access = ModelAccess(model)
    answer_id = resolve_token(access, answer if answer is not None else result.target, "answer")
    wrong_id = resolve_token(access, wrong if wrong is not None else result.contrast, "wrong")
    if wrong_id is None:
        raise PromptError("patch_top needs wrong= (or a contrastive result) to form a logit difference.")
    clean_tokens, corrupted_tokens = _pair(model, clean, corrupted)
    _, cache = model.run_with_cache(clean_tokens)
    if site == "position":
        ranked = torch.argsort(result.scores, descending=True)[:k].tolist()
        sites = [("hook_embed", p, None) for p in ranked]
    elif site == "head":
        per_head = result.aggregate(result.internal("head"))
        flat = torch.argsort(per_head.flatten(), descending=True)[:k].tolist()
        ranked = [(i // per_head.shape[1], i % per_head.shape[1]) for i in flat]
        sites = [(f"blocks.{layer}.attn.hook_z", None, head) for layer, head in ranked]
    else:
        raise ValueError(f"site must be 'position' or 'head', got {site!r}.")
    ld_clean = float(logit_difference(model, clean_tokens, answer_id, wrong_id)[0])
    ld_corrupted = float(logit_difference(model, corrupted_tokens, answer_id, wrong_id)[0])
    hooks = patch_activations(cache, sites) if sites else []
    ld_patched = float(logit_difference(model, corrupted_tokens, answer_id, wrong_id, hooks)[0])
    gap = ld_clean - ld_corrupted
    recovered = (ld_patched - ld_corrupted) / gap if gap != 0 else float("nan")
    return PatchOutcome(recovered, ld_clean, ld_corrupted, ld_patched, ranked)


def residual_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int], batch_size: int = 32
) -> Tensor:
    """Real activation patching: for each layer and position, patch ``blocks.L.hook_resid_pre``
    from the clean run into the corrupted one; returns the fraction of the logit difference
    restored, ``[n_layers, pos]``."""
    access = ModelAccess(model)
    answer_id, wrong_id = resolve_token(access, answer, "answer"), resolve_token(access, wrong, "wrong")
    clean_tokens, corrupted_tokens = _pair(model, clean, corrupted)
    names = [f"blocks.{L}.hook_resid_pre" for L in range(access.n_layers)]
    _, cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    ld_clean = float(logit_difference(model, clean_tokens, answer_id, wrong_id)[0])
    ld_corrupted = float(logit_difference(model, corrupted_tokens, answer_id, wrong_id)[0])
    n_pos = clean_tokens.shape[-1]
    cells = [(L, p) for L in range(access.n_layers) for p in range(n_pos)]
    effect = torch.zeros(access.n_layers, n_pos)
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]

        def patch(act: Tensor, hook, chunk=chunk) -> Tensor:
            layer = int(hook.name.split(".")[1])
            act = act.clone()
            for row, (L, p) in enumerate(chunk):
                if L == layer:
                    act[row, p] = cache[names[L]][0, p].to(act)
            return act

        layers = sorted({L for L, _ in chunk})
        hooks = [(names[L], patch) for L in layers]
        lds = logit_difference(model, corrupted_tokens.expand(len(chunk), -1), answer_id, wrong_id, hooks)
        for row, (L, p) in enumerate(chunk):
            effect[L, p] = (lds[row] - ld_corrupted) / (ld_clean - ld_corrupted)
    return effect


def attribution_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int]
) -> Tensor:
    """The first-order estimate of :func:`residual_patching_map` from one backward pass.

    The contrastive Semantic Scope's probe ``v = w_answer - w_wrong`` gives, in one backward
    pass on the corrupted prompt, the gradient ``g = J^T v`` of the logit difference with
    respect to every residual-stream cell (the vector whose norm is the scope's layer map).
    Its dot product with the clean-minus-corrupted activation predicts what patching that
    cell restores ("attribution patching"): ``(a_clean - a_corrupted) · g / (LD_clean -
    LD_corrupted)``, ``[n_layers, pos]``. Exact for a patch the model responds to linearly;
    where the sensitivity map ranks cells by how much *any* change there would matter, this
    ranks them by how much *this* change does.

    Example:
        >>> clean, corrupted = "The capital of France is", "The capital of Italy is"
        >>> est = attribution_patching_map(model, clean, corrupted, " Paris", " Rome")  # doctest: +SKIP
    """
    access = ModelAccess(model)
    answer_id, wrong_id = resolve_token(access, answer, "answer"), resolve_token(access, wrong, "wrong")
    clean_tokens, corrupted_tokens = _pair(model, clean, corrupted)
    names = [f"blocks.{L}.hook_resid_pre" for L in range(access.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    ld_clean = float(logit_difference(model, clean_tokens, answer_id, wrong_id)[0])
    ld_corrupted = float(logit_difference(model, corrupted_tokens, answer_id, wrong_id)[0])
    with access.frozen():
        state = forward_to_final_hidden(access, corrupted_tokens, perturb=names, keep_activations=True)
        y = state.y[0, -1]
        v = semantic_probe(access.W_U, answer_id, wrong_id).to(y)
        grads = torch.autograd.grad(y, [state.leaves[n] for n in names], grad_outputs=v)
    effect = torch.stack([
        ((cache[n][0].float() - state.activations[n][0].float()) * g[0].float()).sum(-1) for n, g in zip(names, grads)
    ]).cpu()
    return effect / (ld_clean - ld_corrupted)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two tensors (flattened)."""
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
