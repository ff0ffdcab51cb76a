"""From attribution to a causal claim: patch what a scope points at, and compare a scope's
layer x position map with real activation patching.

The metric is the logit difference ``LD = z[answer] - z[wrong]`` at the last position; a
patch's effect is the fraction of the clean-corrupted gap it restores,
``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)`` (1 = fully restored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import MissingHookError, NonFiniteError, OptionError, PromptError, TargetError
from ..models.access import ModelAccess
from ..models.hook_names import EMBED_HOOK, site_hook, site_hooks
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
    if torch.equal(a, b):
        raise PromptError(
            "clean and corrupted prompts are the same tokens, so there is nothing to patch: change the "
            "token(s) whose effect you want to measure in the corrupted prompt."
        )
    return a, b


def _first_difference(clean: Tensor, corrupted: Tensor) -> int:
    """The first position where the two ``[1, pos]`` token rows differ."""
    return int((clean[0] != corrupted[0]).nonzero()[0])


def _check_site(site: Any, allowed: tuple[str, ...], meaning: str) -> None:
    if not isinstance(site, str) or site not in allowed:
        raise OptionError(f"site must be {meaning}, got {site!r}.")


def _cache(model: Any, tokens: Tensor, names: Any) -> Any:
    """The activations ``names`` of one run, without building a graph."""
    names = set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    missing = sorted(n for n in names if n not in cache)
    if missing:
        raise MissingHookError(
            f"the model has no hook point {missing[0]!r} to patch: load it with TransformerLens "
            f"(tjs.load_model / HookedTransformer / TransformerBridge) so every block exposes it."
        )
    return cache


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive int (patched runs per forward pass), got {batch_size!r}.")


def logit_difference(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    answer: int,
    wrong: int,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> Float[Tensor, " batch"]:
    """``z[answer] - z[wrong]`` at the last position for each row."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1]
    difference: Tensor = (logits[:, answer] - logits[:, wrong]).float().cpu()
    return difference


@dataclass
class PatchOutcome:
    """How much of the clean-corrupted logit difference a patch restored."""

    recovered: float
    ld_clean: float
    ld_corrupted: float
    ld_patched: float
    patched: list[Any]


def patch_top(
    model: Any,
    clean: Any,
    corrupted: Any,
    result: Union[ScopeResult, Float[Tensor, " pos"], Float[Tensor, "n_layers n_heads"]],
    k: int = 3,
    answer: Union[str, int, None] = None,
    wrong: Union[str, int, None] = None,
    site: str = "position",
) -> PatchOutcome:
    """Patch the ``k`` sites ranked highest from the clean run into the corrupted one.

    Args:
        model: The model.
        clean, corrupted: Prompts of equal token length.
        result: What ranks the sites: a scope result (positions by ``scores``; heads by
            ``head_scores``, which needs ``internals=True``), or a tensor of scores, ``[pos]``
            for positions or ``[n_layers, n_heads]`` for heads (e.g. from
            :func:`attribution_patching_map` with ``site="head"``).
        k: How many positions or heads to patch, 0 (patches nothing: a baseline) up to all of them.
        answer, wrong: The two tokens of the logit difference (default: the result's
            target and contrast).
        site: ``"position"`` patches the input embeddings (``hook_embed``) at the top-k
            positions; ``"head"`` patches the top-k heads' outputs (``hook_z``) everywhere.
            A tensor's shape decides this.

    Raises:
        OptionError: ``k`` is not an int in ``0..number of sites``, an unknown ``site``, or
            scores of the wrong shape.
        PromptError: Prompts of different lengths, or identical prompts.
        TargetError: A missing ``answer``/``wrong``, ``answer == wrong``, or a logit
            difference the corruption does not change.
        NonFiniteError: NaN or infinity in the scores or the logit differences.

    Example:
        >>> r = tjs.semantic_scope(model, clean, target=" Paris", contrast=" Rome", internals=True)  # doctest: +SKIP
        >>> patch_top(model, clean, corrupted, r, k=2).recovered  # doctest: +SKIP
    """
    if isinstance(result, Tensor):
        if result.dim() not in (1, 2):
            raise OptionError(
                f"scores must be [pos] (positions) or [n_layers, n_heads] (heads), got shape {tuple(result.shape)}."
            )
        site, scores = ("position" if result.dim() == 1 else "head"), result.detach().cpu()
        if answer is None or wrong is None:
            raise TargetError("patch_top with a tensor of scores needs answer= and wrong= (the logit difference).")
    else:
        _check_site(site, ("position", "head"), "'position' (input embeddings) or 'head' (attention heads' hook_z)")
        scores = result.scores if site == "position" else result.aggregate(result.internal("head"))
        answer = answer if answer is not None else result.target
        wrong = wrong if wrong is not None else result.contrast
        if wrong is None:
            raise TargetError("patch_top needs wrong= (or a contrastive result) to form a logit difference.")
    scores = scores.detach().float().cpu()
    if not torch.isfinite(scores).all():
        raise NonFiniteError("the scores that rank the sites contain NaN or infinity.")
    pair = _Contrast.build(model, clean, corrupted, answer, wrong)
    expected = (pair.clean.shape[-1],) if site == "position" else (pair.access.n_layers, pair.access.n_heads)
    if tuple(scores.shape) != expected:
        what = "[pos] for the clean prompt" if site == "position" else "[n_layers, n_heads]"
        raise OptionError(f"scores must be {what}, shape {expected}; got {tuple(scores.shape)}.")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= scores.numel():
        raise OptionError(
            f"k must be an int from 0 to {scores.numel()} (the number of {site}s to patch), got {k!r}."
        )
    flat = torch.argsort(scores.flatten(), descending=True, stable=True)[:k].tolist()  # ties: lowest index first
    if site == "position":
        ranked = flat
        sites = [(EMBED_HOOK, p, None) for p in ranked]
    else:
        ranked = [(i // scores.shape[1], i % scores.shape[1]) for i in flat]
        sites = [(site_hook("head", layer), None, head) for layer, head in ranked]
    hooks = patch_activations(_cache(model, pair.clean, {name for name, _, _ in sites}), sites) if sites else []
    ld_patched = float(logit_difference(model, pair.corrupted, pair.answer, pair.wrong, hooks)[0])
    recovered = (ld_patched - pair.ld_corrupted) / pair.gap
    return PatchOutcome(recovered, pair.ld_clean, pair.ld_corrupted, ld_patched, ranked)


@dataclass
class _Contrast:
    """A clean/corrupted pair, its answer and wrong tokens, and both logit differences."""

    access: ModelAccess
    clean: Tensor
    corrupted: Tensor
    answer: int
    wrong: int
    ld_clean: float
    ld_corrupted: float

    @classmethod
    def build(cls, model: Any, clean: Any, corrupted: Any, answer: Any, wrong: Any) -> "_Contrast":
        access = ModelAccess(model)
        answer_id, wrong_id = resolve_token(access, answer, "answer"), resolve_token(access, wrong, "wrong")
        if answer_id is None or wrong_id is None:
            raise TargetError("patching needs both answer= and wrong= tokens: the metric is z[answer] - z[wrong].")
        if answer_id == wrong_id:
            raise TargetError(
                f"answer and wrong are the same token ({answer!r}), so the logit difference is always 0: "
                f"pass the clean prompt's answer and the corrupted prompt's answer."
            )
        clean_tokens, corrupted_tokens = _pair(model, clean, corrupted)
        lds = [float(logit_difference(model, t, answer_id, wrong_id)[0]) for t in (clean_tokens, corrupted_tokens)]
        if not all(map(math.isfinite, lds)):
            raise NonFiniteError(f"the logit differences (clean, corrupted) are {lds}: the model's logits are not finite.")
        pair = cls(access, clean_tokens, corrupted_tokens, answer_id, wrong_id, *lds)
        # Float32 logits carry ~1e-6 relative noise; a gap at that level makes every fraction noise.
        if abs(pair.gap) <= 1e-5 * max(1.0, abs(lds[0]), abs(lds[1])):
            raise TargetError(
                f"the logit difference is the same on both prompts (clean {lds[0]:.6g}, corrupted {lds[1]:.6g}), "
                f"so there is no gap for a patch to restore: pick answer/wrong tokens that the corruption swaps."
            )
        return pair

    def hook_names(self, site: str) -> list[str]:
        _check_site(site, ("layer", "head"), "'layer' (blocks.L.hook_resid_pre) or 'head' (blocks.L.attn.hook_z)")
        return site_hooks(site, self.access.n_layers)

    @property
    def gap(self) -> float:
        """``LD_clean - LD_corrupted``: what a patch can restore."""
        return self.ld_clean - self.ld_corrupted

    def restored(self, ld: Tensor) -> Tensor:
        return (ld - self.ld_corrupted) / self.gap


def patching_map(
    model: Any,
    clean: Any,
    corrupted: Any,
    answer: Union[str, int],
    wrong: Union[str, int],
    site: str = "layer",
    batch_size: int = 32,
) -> Float[Tensor, "n_layers width"]:
    """Real activation patching, one cell at a time, from the clean run into the corrupted one.

    Returns the fraction of the logit difference restored by each patch: ``site="layer"``
    patches ``blocks.L.hook_resid_pre`` at one position (``[n_layers, pos]``), ``site="head"``
    one head's ``hook_z`` at every position (``[n_layers, n_heads]``). ``batch_size`` patched
    runs go through the model as one batch. A cell whose clean activation equals the
    corrupted one (e.g. every position before the first differing token) is exactly 0
    without a forward pass: patching it is a no-op, and running it would only add float noise
    from batching that makes such cells' order arbitrary.

    Raises:
        OptionError: An unknown ``site`` or a ``batch_size`` that is not a positive int.
        PromptError: Prompts of different lengths, or identical prompts.
        TargetError: ``answer == wrong``, or a logit difference the corruption does not change.

    Example:
        >>> clean, corrupted = "The capital of France is", "The capital of Italy is"
        >>> heads = patching_map(model, clean, corrupted, " Paris", " Rome", site="head")  # doctest: +SKIP
    """
    _check_site(site, ("layer", "head"), "'layer' (blocks.L.hook_resid_pre) or 'head' (blocks.L.attn.hook_z)")
    _check_batch_size(batch_size)
    pair = _Contrast.build(model, clean, corrupted, answer, wrong)
    names = pair.hook_names(site)
    cache, corrupted_cache = _cache(model, pair.clean, names), _cache(model, pair.corrupted, names)
    width = pair.clean.shape[-1] if site == "layer" else cache[names[0]].shape[2]

    def clean_part(L: int, i: int, source: Any = cache) -> Tensor:
        part: Tensor = source[names[L]][0, i] if site == "layer" else source[names[L]][0, :, i]
        return part

    cells = [
        (L, i) for L in range(len(names)) for i in range(width)
        if not torch.equal(clean_part(L, i), clean_part(L, i, corrupted_cache))
    ]
    effect = torch.zeros(len(names), width)
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]

        def patch(act: Tensor, hook: Any, chunk: list[tuple[int, int]] = chunk) -> Tensor:
            layer = int(hook.name.split(".")[1])
            act = act.clone()
            for row, (L, i) in enumerate(chunk):
                if L == layer:
                    index = (row, i) if site == "layer" else (row, slice(None), i)
                    act[index] = clean_part(L, i).to(act)
            return act

        hooks = [(names[L], patch) for L in sorted({L for L, _ in chunk})]
        lds = logit_difference(model, pair.corrupted.expand(len(chunk), -1), pair.answer, pair.wrong, hooks)
        rows, columns = zip(*chunk)
        effect[list(rows), list(columns)] = pair.restored(lds)
    return effect


def residual_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int], batch_size: int = 32
) -> Float[Tensor, "n_layers pos"]:
    """:func:`patching_map` of the residual stream (``blocks.L.hook_resid_pre``), ``[n_layers, pos]``."""
    return patching_map(model, clean, corrupted, answer, wrong, "layer", batch_size)


def attribution_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int], site: str = "layer"
) -> Float[Tensor, "n_layers width"]:
    """The first-order estimate of :func:`patching_map` from one backward pass.

    The contrastive Semantic Scope's probe ``v = w_answer - w_wrong`` gives, in one backward
    pass on the corrupted prompt, the gradient ``g = J^T v`` of the logit difference with
    respect to every activation (the vector whose norm is the scope's internal maps). Its dot
    product with the clean-minus-corrupted activation predicts what patching it restores
    ("attribution patching"): ``(a_clean - a_corrupted) · g / (LD_clean - LD_corrupted)``, per
    residual cell (``site="layer"``, ``[n_layers, pos]``) or per head summed over positions
    (``site="head"``, ``[n_layers, n_heads]``). Exact for a patch the model responds to
    linearly; where the scope's sensitivity maps rank sites by how much *any* change there
    would matter, this ranks them by how much *this* change does.

    Example:
        >>> clean, corrupted = "The capital of France is", "The capital of Italy is"
        >>> est = attribution_patching_map(model, clean, corrupted, " Paris", " Rome", site="head")  # doctest: +SKIP
        >>> patch_top(model, clean, corrupted, est, k=3, answer=" Paris", wrong=" Rome").recovered  # doctest: +SKIP

    Raises:
        OptionError: An unknown ``site``.
        PromptError: Prompts of different lengths, or identical prompts.
        TargetError: ``answer == wrong``, or a logit difference the corruption does not change.
    """
    _check_site(site, ("layer", "head"), "'layer' (blocks.L.hook_resid_pre) or 'head' (blocks.L.attn.hook_z)")
    pair = _Contrast.build(model, clean, corrupted, answer, wrong)
    names = pair.hook_names(site)
    access = pair.access
    cache = _cache(model, pair.clean, names)
    with access.frozen():
        state = forward_to_final_hidden(access, pair.corrupted, perturb=names, keep_activations=True)
        y = state.y[0, -1]
        v = semantic_probe(access.W_U, pair.answer, pair.wrong).to(y)
        grads = torch.autograd.grad(y, [state.leaves[n] for n in names], grad_outputs=v)
    effect = []
    for name, grad in zip(names, grads):
        change = (cache[name][0].float() - state.activations[name][0].float()) * grad[0].float()
        effect.append(change.sum(-1) if site == "layer" else change.sum(dim=(0, 2)))
    return torch.stack(effect).cpu() / pair.gap  # already a change in LD, so no offset


def movable_cells(model: Any, clean: Any, corrupted: Any) -> Bool[Tensor, "n_layers pos"]:
    """The residual cells that patching can move: ``[n_layers, pos]``, True from the first
    position where the clean and corrupted tokens differ onwards.

    Causal attention keeps ``blocks.L.hook_resid_pre`` at every earlier position identical in
    both runs, so patching there restores exactly 0 whatever a scope says. Correlating a map
    with patching over those cells mostly measures how the map treats a block of guaranteed
    zeros; pass this mask to :func:`spearman` to correlate over the cells that carry signal.

    Example:
        >>> mask = movable_cells(model, "The capital of France is", "The capital of Italy is")  # doctest: +SKIP
        >>> spearman(estimate, patched, mask=mask)  # doctest: +SKIP
    """
    access = ModelAccess(model)
    clean_tokens, corrupted_tokens = _pair(model, clean, corrupted)
    mask = torch.zeros(access.n_layers, clean_tokens.shape[-1], dtype=torch.bool)
    mask[:, _first_difference(clean_tokens, corrupted_tokens) :] = True
    return mask


def spearman(a: Any, b: Any, mask: Optional[Any] = None) -> float:
    """Spearman rank correlation of two maps, over all their cells or the cells where ``mask`` is True.

    Tied values share their average rank (``scipy.stats.spearmanr``). Patching maps hold many
    exact ties (cells patching cannot move are exactly 0), and ranking them with an unstable
    sort gives them an arbitrary order that changes the correlation by up to ±0.5 between
    machines; average ranks make the value a property of the maps alone.

    Args:
        a, b: Tensors (or arrays) of the same shape, e.g. a scope's ``[n_layers, pos]`` map
            and :func:`patching_map`'s.
        mask: Optional boolean tensor of that shape selecting the cells to correlate, e.g.
            :func:`movable_cells`.

    Returns:
        The correlation in ``[-1, 1]``, or ``nan`` when either map is constant over the
        selected cells (there is no ranking to correlate; ``nan`` propagates into any mean,
        so it cannot pass for a number).

    Raises:
        OptionError: The shapes differ, the mask is not boolean of that shape, or it selects
            fewer than 2 cells.
        NonFiniteError: A selected value is NaN or infinite.
    """
    from scipy.stats import spearmanr  # imported here: only this function needs scipy

    a, b = torch.as_tensor(a).detach().cpu(), torch.as_tensor(b).detach().cpu()
    if a.shape != b.shape:
        raise OptionError(f"spearman needs two maps of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if mask is not None:
        mask = torch.as_tensor(mask).cpu()
        if mask.dtype != torch.bool or mask.shape != a.shape:
            raise OptionError(
                f"mask must be a boolean tensor of shape {tuple(a.shape)}, got {mask.dtype} {tuple(mask.shape)}."
            )
        a, b = a[mask], b[mask]
    a, b = a.flatten().double().numpy(), b.flatten().double().numpy()
    if a.size < 2:
        raise OptionError(f"spearman needs at least 2 cells to rank, got {a.size}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise NonFiniteError("spearman got NaN or infinite values: rank correlation of them is meaningless.")
    if (a == a[0]).all() or (b == b[0]).all():
        return float("nan")
    return float(spearmanr(a, b)[0])
