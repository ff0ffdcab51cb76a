"""From attribution to a causal claim: patch what a scope points at, and compare a scope's
layer x position map with real activation patching.

The metric is the logit difference ``LD = z[answer] - z[wrong]`` at the last position; a
patch's effect is the fraction of the clean-corrupted gap it restores,
``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)`` (1 = fully restored). Maps come
back as labelled :class:`PatchingResult` objects (``.top``, ``.to_dataframe``, ``.show``, ``.plot``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
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
from ..scopes.probes import output_at, semantic_probe
from .interventions import patch_activations
from .patching_result import ESTIMATED, RESTORED, PatchingResult, as_values, cell_label


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


#: How :func:`patch_top` ranks the sites when given a :class:`ScopeResult` (or nothing).
RANK_BY = ("attribution", "scope")


class RawSensitivityWarning(UserWarning):
    """Sites were ranked by a scope's raw sensitivity map, which rarely picks what a patch restores."""


@dataclass(repr=False)
class PatchOutcome:
    """How much of the clean-corrupted logit difference a patch restored.

    Attributes:
        recovered: ``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``; 1 = fully restored.
        ld_clean, ld_corrupted, ld_patched: The logit difference ``z[answer] - z[wrong]`` on
            each run.
        patched: The patched sites, best-ranked first: positions (ints) or ``(layer, head)``
            / ``(layer, position)`` tuples.
        labels: The same sites as text: ``"4: France"`` (position), ``"L23H3"`` (head) or
            ``"L5 4: France"`` (a residual-stream cell).
        site: ``"position"``, ``"head"`` or ``"resid_pre"``.
        ranked_by: What ranked them, e.g. ``"attribution patching"``.
    """

    recovered: float
    ld_clean: float
    ld_corrupted: float
    ld_patched: float
    patched: list[Any]
    labels: list[str] = field(default_factory=list)
    site: str = "position"
    ranked_by: str = ""

    def __repr__(self) -> str:
        ranked = f", ranked_by={self.ranked_by!r}" if self.ranked_by else ""
        return (
            f"PatchOutcome(recovered={self.recovered:.3f}, patched {len(self.patched)} {self.site}(s) "
            f"{self.labels}{ranked}, ld_clean={self.ld_clean:.4g}, ld_corrupted={self.ld_corrupted:.4g}, "
            f"ld_patched={self.ld_patched:.4g})"
        )


def patch_top(
    model: Any,
    clean: Any,
    corrupted: Any,
    result: Union[ScopeResult, PatchingResult, Float[Tensor, " pos"], Float[Tensor, "n_layers n_heads"], None] = None,
    k: int = 3,
    answer: Union[str, int, None] = None,
    wrong: Union[str, int, None] = None,
    site: str = "position",
    rank_by: str = "attribution",
) -> PatchOutcome:
    """Patch the ``k`` sites ranked highest from the clean run into the corrupted one.

    By default the sites are ranked by attribution patching (:func:`attribution_patching_map`:
    the scope's gradient dotted with the clean-minus-corrupted activation), the estimate of
    what each patch restores. A scope's own maps (``rank_by="scope"``) measure how much *any*
    change at a site would move the logit difference, not what this change does: on the
    default model their top heads are layer-0 heads the corruption barely changes, and patching
    them restores ~0% where attribution's top 3 restore > 90% (README, "Faithfulness and
    patching"); that ranking warns with :class:`RawSensitivityWarning`.

    Args:
        model: The model.
        clean: The clean prompt.
        corrupted: The corrupted prompt, of the same token length.
        result: What ranks the sites, or supplies ``answer``/``wrong``:

            * a :class:`ScopeResult` (or None): its target and contrast are the default
              ``answer``/``wrong``; the sites are ranked as ``rank_by`` says;
            * a :class:`PatchingResult` (e.g. from :func:`attribution_patching_map` or
              :func:`patching_map`): ranks its own cells, heads (``site="head"``) or residual
              cells (``site="resid_pre"``: one layer's ``hook_resid_pre`` at one position);
            * a tensor of scores: ``[pos]`` for positions or ``[n_layers, n_heads]`` for heads.
        k: How many sites to patch, 0 (patches nothing: a baseline) up to all of them.
        answer: The token whose logit counts positively (default: the result's target).
        wrong: The token whose logit is subtracted (default: the result's contrast).
        site: For a ScopeResult or None: ``"position"`` patches the input embeddings
            (``hook_embed``) at the top-k positions; ``"head"`` patches the top-k heads'
            outputs (``hook_z``) at every position. A PatchingResult or tensor decides it.
        rank_by: For a ScopeResult or None: ``"attribution"`` (default; the first-order
            estimate of each patch's effect, one backward pass) or ``"scope"`` (the result's
            ``scores`` for positions, its raw head map for heads, which needs
            ``internals=True``).

    Raises:
        OptionError: ``k`` is not an int in ``0..number of sites``, an unknown ``site`` or
            ``rank_by``, ``rank_by="scope"`` without a ScopeResult, or scores of the wrong shape.
        PromptError: Prompts of different lengths, or identical prompts.
        TargetError: A missing ``answer``/``wrong``, ``answer == wrong``, or a logit
            difference the corruption does not change.
        NonFiniteError: NaN or infinity in the scores or the logit differences.

    Examples:
        >>> clean = "When Mary and John went to the store, John gave a drink to"
        >>> corrupted = "When Mary and John went to the store, Mary gave a drink to"
        >>> r = tjs.semantic_scope(model, clean, target=" Mary", contrast=" John")
        >>> tjs.patching.patch_top(model, clean, corrupted, r, k=3, site="head")
        PatchOutcome(recovered=0.95..., patched 3 head(s) ['L23H3', 'L29H1', 'L19H2'], ranked_by='attribution patching', ...)
    """
    if rank_by not in RANK_BY:
        raise OptionError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}.")
    if isinstance(result, (Tensor, PatchingResult)):
        if rank_by != "attribution":
            raise OptionError(
                "rank_by applies to a ScopeResult; a tensor or PatchingResult ranks the sites by its own values."
            )
        if isinstance(result, PatchingResult):
            site, scores, ranked_by = result.site, result.values, result.method
            answer = answer if answer is not None else result.answer_str
            wrong = wrong if wrong is not None else result.wrong_str
        else:
            if result.dim() not in (1, 2):
                raise OptionError(
                    f"scores must be [pos] (positions) or [n_layers, n_heads] (heads), got shape {tuple(result.shape)}."
                )
            site, scores, ranked_by = ("position" if result.dim() == 1 else "head"), result, "the given scores"
        if answer is None or wrong is None:
            raise TargetError("patch_top with a tensor of scores needs answer= and wrong= (the logit difference).")
    else:
        _check_site(site, ("position", "head"), "'position' (input embeddings) or 'head' (attention heads' hook_z)")
        if result is None and rank_by == "scope":
            raise OptionError("rank_by='scope' ranks by a scope's map: pass the ScopeResult as result=.")
        if result is not None:
            answer = answer if answer is not None else result.target
            wrong = wrong if wrong is not None else result.contrast
        if answer is None or wrong is None:
            raise TargetError(
                "patch_top needs answer= and wrong= (or a contrastive ScopeResult) to form a logit difference."
            )
        if rank_by == "scope":
            assert result is not None
            warnings.warn(
                "rank_by='scope' ranks sites by the scope's raw sensitivity (how much any change there would move "
                "the logit difference), not by what this clean-to-corrupted change does: its top sites are often "
                "ones the corruption barely changes (layer-0 heads, unchanged tokens), whose patch restores ~0. "
                "rank_by='attribution' (the default) estimates each patch's effect.",
                RawSensitivityWarning,
                stacklevel=2,
            )
            scores, ranked_by = (result.scores if site == "position" else result.aggregate(result.internal("head"))), "scope"
        else:
            estimate = attribution_patching_map(model, clean, corrupted, answer, wrong, "head" if site == "head" else "layer")
            # Row 0 patches blocks.0.hook_resid_pre, whose clean-corrupted difference is the
            # token embeddings' (positions embed the same in both): the estimate for hook_embed.
            scores, ranked_by = (estimate.values if site == "head" else estimate.values[0]), "attribution patching"
    scores = scores.detach().float().cpu()
    if not torch.isfinite(scores).all():
        raise NonFiniteError("the scores that rank the sites contain NaN or infinity.")
    pair = _Contrast.build(model, clean, corrupted, answer, wrong)
    n_layers = pair.access.n_layers
    expected = {
        "position": (pair.clean.shape[-1],),
        "head": (n_layers, pair.access.n_heads),
        "resid_pre": (n_layers, pair.clean.shape[-1]),
    }[site]
    if tuple(scores.shape) != expected:
        what = {"position": "[pos] for the clean prompt", "head": "[n_layers, n_heads]", "resid_pre": "[n_layers, pos]"}[site]
        raise OptionError(f"scores must be {what}, shape {expected}; got {tuple(scores.shape)}.")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= scores.numel():
        raise OptionError(
            f"k must be an int from 0 to {scores.numel()} (the number of {site}s to patch), got {k!r}."
        )
    flat = torch.argsort(scores.flatten(), descending=True, stable=True)[:k].tolist()  # ties: lowest index first
    tokens = pair.access.to_str_tokens(pair.clean)
    ranked: list[Any]
    if site == "position":
        ranked = flat
        sites = [(EMBED_HOOK, p, None) for p in ranked]
        labels = [f"{p}:{tokens[p]}" for p in ranked]
    else:
        ranked = [divmod(i, scores.shape[1]) for i in flat]
        if site == "head":
            sites = [(site_hook("head", layer), None, head) for layer, head in ranked]
            labels = [cell_label(f"L{layer}", f"H{head}", "head") for layer, head in ranked]
        else:
            sites = [(site_hook("layer", layer), p, None) for layer, p in ranked]
            labels = [cell_label(f"L{layer}", f"{p}:{tokens[p]}", site) for layer, p in ranked]
    hooks = patch_activations(_cache(model, pair.clean, {name for name, _, _ in sites}), sites) if sites else []
    ld_patched = float(logit_difference(model, pair.corrupted, pair.answer, pair.wrong, hooks)[0])
    recovered = (ld_patched - pair.ld_corrupted) / pair.gap
    return PatchOutcome(recovered, pair.ld_clean, pair.ld_corrupted, ld_patched, ranked, labels, site, ranked_by)


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

    def labelled(self, values: Tensor, site: str, method: str, metric: str) -> PatchingResult:
        """``values`` (``[n_layers, pos]`` for ``site="layer"``, else ``[n_layers, n_heads]``) with labels."""
        clean_tokens = self.access.to_str_tokens(self.clean)
        columns = (
            [f"{i}:{t}" for i, t in enumerate(clean_tokens)] if site == "layer"
            else [f"H{h}" for h in range(values.shape[1])]
        )
        return PatchingResult(
            values=values, metric=metric, method=method, site="resid_pre" if site == "layer" else "head",
            row_labels=[f"L{L}" for L in range(values.shape[0])], col_labels=columns,
            clean_str_tokens=clean_tokens, corrupted_str_tokens=self.access.to_str_tokens(self.corrupted),
            answer_str=self.access.token_str(self.answer), wrong_str=self.access.token_str(self.wrong),
            ld_clean=self.ld_clean, ld_corrupted=self.ld_corrupted, model_name=self.access.model_name,
        )


def patching_map(
    model: Any,
    clean: Any,
    corrupted: Any,
    answer: Union[str, int],
    wrong: Union[str, int],
    site: str = "layer",
    batch_size: int = 32,
) -> PatchingResult:
    """Real activation patching, one cell at a time, from the clean run into the corrupted one.

    Returns a :class:`PatchingResult` of the fraction of the logit difference restored by each
    patch (the tensor is its ``values``): ``site="layer"`` patches ``blocks.L.hook_resid_pre`` at
    one position (``[n_layers, pos]``, result site ``"resid_pre"``), ``site="head"`` one head's
    ``hook_z`` at every position (``[n_layers, n_heads]``). ``batch_size`` patched
    runs go through the model as one batch. A cell whose clean activation equals the
    corrupted one (e.g. every position before the first differing token) is exactly 0
    without a forward pass: patching it is a no-op, and running it would only add float noise
    from batching that makes such cells' order arbitrary.

    Raises:
        OptionError: An unknown ``site`` or a ``batch_size`` that is not a positive int.
        PromptError: Prompts of different lengths, or identical prompts.
        TargetError: ``answer == wrong``, or a logit difference the corruption does not change.

    Examples:
        >>> clean, corrupted = "The capital of France is", "The capital of Italy is"
        >>> heads = patching_map(model, clean, corrupted, " Paris", " Rome", site="head")
        >>> top, df, view = heads.top(3), heads.to_dataframe(), heads.show()
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
    return pair.labelled(effect, site, "activation patching", RESTORED)


def residual_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int], batch_size: int = 32
) -> PatchingResult:
    """:func:`patching_map` of the residual stream (``blocks.L.hook_resid_pre``), ``[n_layers, pos]``."""
    return patching_map(model, clean, corrupted, answer, wrong, "layer", batch_size)


def attribution_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int], site: str = "layer"
) -> PatchingResult:
    """The first-order estimate of :func:`patching_map` from one backward pass.

    The contrastive Semantic Scope's probe ``v = w_answer - w_wrong`` gives, in one backward
    pass on the corrupted prompt, the gradient ``g = J^T v`` of the logit difference with
    respect to every activation (the vector whose norm is the scope's internal maps). Its dot
    product with the clean-minus-corrupted activation predicts what patching it restores
    ("attribution patching"): ``(a_clean - a_corrupted) · g / (LD_clean - LD_corrupted)``, per
    residual cell (``site="layer"``, ``[n_layers, pos]``) or per head summed over positions
    (``site="head"``, ``[n_layers, n_heads]``), as a :class:`PatchingResult`. Exact for a patch the model responds to
    linearly; where the scope's sensitivity maps rank sites by how much *any* change there
    would matter, this ranks them by how much *this* change does.

    Examples:
        >>> clean, corrupted = "The capital of France is", "The capital of Italy is"
        >>> est = attribution_patching_map(model, clean, corrupted, " Paris", " Rome", site="head")
        >>> top = est.top(3)
        >>> recovered = patch_top(model, clean, corrupted, est, k=3).recovered

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
        _, slope = output_at(y, access.W_U, access.b_U, access.logit_transform, need_slope=True)
        v = semantic_probe(access.W_U, pair.answer, pair.wrong, slope).to(y)
        grads = torch.autograd.grad(y, [state.leaves[n] for n in names], grad_outputs=v)
    effect = []
    for name, grad in zip(names, grads):
        change = (cache[name][0].float() - state.activations[name][0].float()) * grad[0].float()
        effect.append((change.sum(-1) if site == "layer" else change.sum(dim=(0, 2))).cpu())  # layers' devices differ
    values = torch.stack(effect) / pair.gap  # already a change in LD, so no offset
    return pair.labelled(values, site, "attribution patching", ESTIMATED)


def movable_cells(model: Any, clean: Any, corrupted: Any) -> Bool[Tensor, "n_layers pos"]:
    """The residual cells that patching can move: ``[n_layers, pos]``, True from the first
    position where the clean and corrupted tokens differ onwards.

    Causal attention keeps ``blocks.L.hook_resid_pre`` at every earlier position identical in
    both runs, so patching there restores exactly 0 whatever a scope says. Correlating a map
    with patching over those cells mostly measures how the map treats a block of guaranteed
    zeros; pass this mask to :func:`spearman` to correlate over the cells that carry signal.

    Examples:
        >>> clean, corrupted = "The capital of France is", "The capital of Italy is"
        >>> estimate = attribution_patching_map(model, clean, corrupted, " Paris", " Rome").values
        >>> patched = patching_map(model, clean, corrupted, " Paris", " Rome").values
        >>> mask = movable_cells(model, clean, corrupted)
        >>> rho = spearman(estimate, patched, mask=mask)
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
        a: A tensor, array or :class:`PatchingResult`, e.g. a scope's ``[n_layers, pos]`` map.
        b: Another of the same shape, e.g. :func:`patching_map`'s.
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

    a, b = torch.as_tensor(as_values(a)).detach().cpu(), torch.as_tensor(as_values(b)).detach().cpu()
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
