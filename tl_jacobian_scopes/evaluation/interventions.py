"""Interventions as TransformerLens hooks: ablate input positions, patch activations.

Each function returns a list of ``(hook_name, hook_fn)`` pairs, the format of
``model.run_with_hooks(fwd_hooks=...)`` and ``model.hooks(fwd_hooks=...)``, so they compose
with TransformerLens's own tools and with each other.

Example:
    >>> hooks = ablate_positions([2, 5])                     # zero their input embeddings
    >>> logits = model.run_with_hooks(tokens, fwd_hooks=hooks)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..models.access import EMBED_HOOK

Hook = tuple[str, Callable]
Replacement = Union[str, int, Tensor]


def ablate_positions(
    positions: Union[Sequence[int], Tensor],
    replacement: Replacement = "zero",
    model: Any = None,
) -> list[Hook]:
    """Replace the input embedding (``hook_embed``) at ``positions``; positional
    information and attention are kept (the paper's ablation).

    Args:
        positions: Token positions to ablate, for every batch row; or a boolean mask
            ``[batch, pos]`` to ablate different positions per row.
        replacement: ``"zero"`` (the paper), ``"mean"`` (the mean embedding over the
            vocabulary; needs ``model``), a token id (that token's embedding; needs
            ``model``), or a ``[d_model]`` vector.
        model: The model, for ``"mean"`` and token-id replacements.
    """
    if isinstance(replacement, str) and replacement not in ("zero", "mean"):
        raise ValueError(f"replacement must be 'zero', 'mean', a token id or a vector, got {replacement!r}.")
    vector: Optional[Tensor] = None
    if isinstance(replacement, Tensor):
        vector = replacement
    elif replacement == "mean" or isinstance(replacement, int):
        if model is None:
            raise ValueError("ablate_positions needs model= for 'mean' or token-id replacements.")
        W_E = model.W_E.detach()
        vector = W_E.mean(dim=0) if replacement == "mean" else W_E[replacement]

    def hook(act: Tensor, hook) -> Tensor:
        if isinstance(positions, Tensor) and positions.dtype == torch.bool:
            mask = positions.to(act.device)
        else:
            mask = torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
            mask[:, list(positions)] = True
        fill = torch.zeros_like(act) if vector is None else vector.to(act).expand_as(act)
        return torch.where(mask[..., None], fill, act)

    return [(EMBED_HOOK, hook)]


def patch_activations(
    clean_cache: Any,
    sites: Sequence[tuple[str, Optional[int], Optional[int]]],
) -> list[Hook]:
    """Patch activations from a clean run into the current (corrupted) run.

    Args:
        clean_cache: An ``ActivationCache`` (or dict) from ``model.run_with_cache(clean)``.
        sites: ``(hook_name, position, head)`` triples; ``position=None`` patches every
            position, ``head`` indexes ``hook_z``-style ``[batch, pos, head, d_head]``
            activations (None: the whole activation).
    """
    by_hook: dict[str, list[tuple[Optional[int], Optional[int]]]] = {}
    for name, position, head in sites:
        by_hook.setdefault(name, []).append((position, head))

    def make(name: str) -> Callable:
        clean = clean_cache[name]

        def hook(act: Tensor, hook) -> Tensor:
            act = act.clone()
            for position, head in by_hook[name]:
                index: tuple = (slice(None), slice(None) if position is None else position)
                if head is not None:
                    index = index + (head,)
                act[index] = clean[index].to(act)
            return act

        return hook

    return [(name, make(name)) for name in by_hook]
