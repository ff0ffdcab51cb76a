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
from ..scopes.internals import SITES
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
    result: Union[ScopeResult, Tensor],
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
        k: How many positions or heads to patch (0 patches nothing).
        answer, wrong: The two tokens of the logit difference (default: the result's
            target and contrast).
        site: ``"position"`` patches the input embeddings (``hook_embed``) at the top-k
            positions; ``"head"`` patches the top-k heads' outputs (``hook_z``) everywhere.
            A tensor's shape decides this.

    Example:
        >>> r = tjs.semantic_scope(model, clean, target=" Paris", contrast=" Rome", internals=True)  # doctest: +SKIP
        >>> patch_top(model, clean, corrupted, r, k=2).recovered  # doctest: +SKIP
    """
    if isinstance(result, Tensor):
        if result.dim() not in (1, 2):
            raise ValueError(f"scores must be [pos] (positions) or [n_layers, n_heads] (heads), got shape {tuple(result.shape)}.")
        site, scores = ("position" if result.dim() == 1 else "head"), result.detach().cpu()
        if answer is None or wrong is None:
            raise PromptError("patch_top with a tensor of scores needs answer= and wrong= (the logit difference).")
    elif site not in ("position", "head"):
        raise ValueError(f"site must be 'position' or 'head', got {site!r}.")
    else:
        scores = result.scores if site == "position" else result.aggregate(result.internal("head"))
        answer = answer if answer is not None else result.target
        wrong = wrong if wrong is not None else result.contrast
        if wrong is None:
            raise PromptError("patch_top needs wrong= (or a contrastive result) to form a logit difference.")
    pair = _Contrast.build(model, clean, corrupted, answer, wrong)
    flat = torch.argsort(scores.flatten(), descending=True)[:k].tolist()
    if site == "position":
        ranked = flat
        sites = [("hook_embed", p, None) for p in ranked]
    else:
        ranked = [(i // scores.shape[1], i % scores.shape[1]) for i in flat]
        sites = [(SITES["head"].format(L=layer), None, head) for layer, head in ranked]
    _, cache = model.run_with_cache(pair.clean)
    hooks = patch_activations(cache, sites) if sites else []
    ld_patched = float(logit_difference(model, pair.corrupted, pair.answer, pair.wrong, hooks)[0])
    recovered = (ld_patched - pair.ld_corrupted) / pair.gap if pair.gap != 0 else float("nan")
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
        clean_tokens, corrupted_tokens = _pair(model, clean, corrupted)
        lds = [float(logit_difference(model, t, answer_id, wrong_id)[0]) for t in (clean_tokens, corrupted_tokens)]
        return cls(access, clean_tokens, corrupted_tokens, answer_id, wrong_id, *lds)

    def hook_names(self, site: str) -> list[str]:
        if site not in ("layer", "head"):
            raise ValueError(f"site must be 'layer' (blocks.L.hook_resid_pre) or 'head' (blocks.L.attn.hook_z), got {site!r}.")
        return [SITES[site].format(L=L) for L in range(self.access.n_layers)]

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
) -> Tensor:
    """Real activation patching, one cell at a time, from the clean run into the corrupted one.

    Returns the fraction of the logit difference restored by each patch: ``site="layer"``
    patches ``blocks.L.hook_resid_pre`` at one position (``[n_layers, pos]``), ``site="head"``
    one head's ``hook_z`` at every position (``[n_layers, n_heads]``). ``batch_size`` patched
    runs go through the model as one batch.

    Example:
        >>> clean, corrupted = "The capital of France is", "The capital of Italy is"
        >>> heads = patching_map(model, clean, corrupted, " Paris", " Rome", site="head")  # doctest: +SKIP
    """
    pair = _Contrast.build(model, clean, corrupted, answer, wrong)
    names = pair.hook_names(site)
    _, cache = model.run_with_cache(pair.clean, names_filter=lambda n: n in names)
    width = pair.clean.shape[-1] if site == "layer" else cache[names[0]].shape[2]
    cells = [(L, i) for L in range(len(names)) for i in range(width)]
    lds = torch.zeros(len(cells))
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]

        def patch(act: Tensor, hook, chunk=chunk) -> Tensor:
            layer = int(hook.name.split(".")[1])
            act = act.clone()
            for row, (L, i) in enumerate(chunk):
                if L == layer:
                    index = (row, i) if site == "layer" else (row, slice(None), i)
                    act[index] = cache[names[L]][(0, *index[1:])].to(act)
            return act

        hooks = [(names[L], patch) for L in sorted({L for L, _ in chunk})]
        lds[start : start + len(chunk)] = logit_difference(
            model, pair.corrupted.expand(len(chunk), -1), pair.answer, pair.wrong, hooks
        )
    return pair.restored(lds).reshape(len(names), width)


def residual_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int], batch_size: int = 32
) -> Tensor:
    """:func:`patching_map` of the residual stream (``blocks.L.hook_resid_pre``), ``[n_layers, pos]``."""
    return patching_map(model, clean, corrupted, answer, wrong, "layer", batch_size)


def attribution_patching_map(
    model: Any, clean: Any, corrupted: Any, answer: Union[str, int], wrong: Union[str, int], site: str = "layer"
) -> Tensor:
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
    """
    pair = _Contrast.build(model, clean, corrupted, answer, wrong)
    names = pair.hook_names(site)
    access = pair.access
    with torch.no_grad():
        _, cache = model.run_with_cache(pair.clean, names_filter=lambda n: n in names)
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


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two tensors (flattened)."""
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
