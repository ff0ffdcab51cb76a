"""Interventions as TransformerLens hooks: ablate input positions, patch activations.

Each function returns a list of ``(hook_name, hook_fn)`` pairs, the format of
``model.run_with_hooks(fwd_hooks=...)`` and ``model.hooks(fwd_hooks=...)``, so they compose
with TransformerLens's own tools and with each other.

Examples:
    >>> hooks = ablate_positions([2, 5])                     # zero their input embeddings
    >>> tokens = model.to_tokens("The capital of France is")
    >>> logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import MissingHookError, NonFiniteError, OptionError, PositionError, PromptError
from ..models.hook_names import EMBED_HOOK

Hook = tuple[str, Callable[..., Any]]
Replacement = Union[str, int, Float[Tensor, " d_model"]]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_position(position: int, n_tokens: int, what: str) -> None:
    if not -n_tokens <= position < n_tokens:
        raise PositionError(
            f"{what} position {position} is outside a prompt of {n_tokens} tokens: use 0..{n_tokens - 1} "
            f"(or -{n_tokens}..-1 counting from the end)."
        )


def _positions(positions: Union[Sequence[int], Tensor]) -> Union[list[int], Tensor]:
    """A list of int positions, or a boolean ``[batch, pos]`` mask, checked for type."""
    if isinstance(positions, Tensor):
        if positions.dtype == torch.bool:
            if positions.dim() != 2:
                raise PositionError(
                    f"a boolean position mask must be [batch, pos], got shape {tuple(positions.shape)}."
                )
            return positions
        if positions.is_floating_point() or positions.is_complex() or positions.dim() > 1:
            raise PositionError(
                f"positions must be ints (or a boolean [batch, pos] mask), got a {positions.dtype} tensor "
                f"of shape {tuple(positions.shape)}."
            )
        positions = positions.reshape(-1).tolist()
    if _is_int(positions) or isinstance(positions, (str, bytes)):
        raise PositionError(f"positions must be a list of ints, e.g. [{positions!r}], got {positions!r}.")
    try:
        positions = list(positions)
    except TypeError as exc:
        raise PositionError(f"positions must be a list of ints, got {type(positions).__name__}.") from exc
    bad = [p for p in positions if not _is_int(p)]
    if bad:
        raise PositionError(f"positions must be ints, got {bad[0]!r} ({type(bad[0]).__name__}).")
    return positions


def ablate_positions(
    positions: Union[Sequence[int], Bool[Tensor, "batch pos"]],
    replacement: Replacement = "zero",
    model: Any = None,
) -> list[Hook]:
    """Replace the input embedding (``hook_embed``) at ``positions``; positional
    information and attention are kept (the paper's ablation).

    Args:
        positions: Token positions to ablate, for every batch row (negative positions count
            from the end); or a boolean mask ``[batch, pos]`` to ablate different positions
            per row.
        replacement: ``"zero"`` (the paper), ``"mean"`` (the mean embedding over the
            vocabulary; needs ``model``), a token id (that token's embedding; needs
            ``model``), or a ``[d_model]`` vector.
        model: The model, for ``"mean"`` and token-id replacements. When given, positions
            beyond its context and vectors of the wrong width are rejected here rather than
            when the hook runs.

    Raises:
        PositionError: A position is not an int, or (when the hook runs) lies outside the
            prompt; or the mask's shape does not match the input.
        OptionError: An unknown replacement, a token id outside the vocabulary, or a vector
            that is not ``[d_model]``.
        NonFiniteError: A replacement vector with NaN or infinity.
    """
    positions = _positions(positions)
    if model is not None and isinstance(positions, list):
        for p in positions:  # the prompt is not known yet, but the context bounds it
            _check_position(p, int(model.cfg.n_ctx), "ablated")
    vector: Optional[Tensor] = None
    if isinstance(replacement, Tensor):
        vector = replacement.detach()
        if vector.dim() != 1 or (model is not None and vector.shape[0] != model.cfg.d_model):
            width = f"[{model.cfg.d_model}]" if model is not None else "[d_model]"
            raise OptionError(f"a replacement vector must have shape {width}, got {tuple(vector.shape)}.")
        if not torch.isfinite(vector).all():
            raise NonFiniteError("the replacement vector contains NaN or infinity.")
    elif isinstance(replacement, str):
        if replacement not in ("zero", "mean"):
            raise OptionError(f"replacement must be 'zero', 'mean', a token id or a vector, got {replacement!r}.")
        if replacement == "mean":
            if model is None:
                raise OptionError("ablate_positions needs model= for replacement='mean'.")
            vector = model.W_E.detach().mean(dim=0)
    elif _is_int(replacement):
        if model is None:
            raise OptionError("ablate_positions needs model= for a token-id replacement.")
        W_E = model.W_E.detach()
        if not 0 <= replacement < W_E.shape[0]:
            raise OptionError(f"replacement token id {replacement} is outside the vocabulary [0, {W_E.shape[0]}).")
        vector = W_E[replacement]
    else:
        raise OptionError(
            f"replacement must be 'zero', 'mean', a token id or a [d_model] vector, got {type(replacement).__name__}."
        )

    def hook(act: Tensor, hook: Any) -> Tensor:
        if isinstance(positions, Tensor):
            if positions.shape != act.shape[:2]:
                raise PositionError(
                    f"the ablation mask has shape {tuple(positions.shape)} but the input is "
                    f"[batch, pos] = {tuple(act.shape[:2])}: build the mask for these tokens."
                )
            mask = positions.to(act.device)
        else:
            for p in positions:
                _check_position(p, act.shape[1], "ablated")
            mask = torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
            mask[:, positions] = True
        if vector is not None and vector.shape[0] != act.shape[-1]:
            raise OptionError(f"the replacement vector has {vector.shape[0]} entries, the embedding {act.shape[-1]}.")
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

    Raises:
        MissingHookError: A hook name that the cache does not hold.
        PositionError: A position outside the clean prompt.
        OptionError: A malformed site, or a head index the activation does not have.
        PromptError: (when the hook runs) the current prompt's length differs from the clean one.
    """
    by_hook: dict[str, list[tuple[Optional[int], Optional[int]]]] = {}
    for site in sites:
        if not isinstance(site, (tuple, list)) or len(site) != 3:
            raise OptionError(f"each site must be a (hook_name, position, head) triple, got {site!r}.")
        name, position, head = site
        if name not in clean_cache:
            raise MissingHookError(
                f"the clean cache has no activation {name!r}: run model.run_with_cache(clean) without a "
                f"names_filter that drops it (hook names look like 'blocks.0.hook_resid_pre')."
            )
        shape = clean_cache[name].shape
        if position is not None:
            if not _is_int(position):
                raise PositionError(f"a patched position must be an int or None, got {position!r}.")
            _check_position(position, shape[1], "patched")
        if head is not None:
            if len(shape) != 4:
                raise OptionError(f"{name!r} has no head dimension (shape {tuple(shape)}): use head=None.")
            if not _is_int(head) or not 0 <= head < shape[2]:
                raise OptionError(f"head must be an int in 0..{shape[2] - 1} for {name!r}, got {head!r}.")
        by_hook.setdefault(name, []).append((position, head))

    def make(name: str) -> Callable[..., Tensor]:
        clean = clean_cache[name]

        def hook(act: Tensor, hook: Any) -> Tensor:
            if act.shape[1:] != clean.shape[1:]:
                raise PromptError(
                    f"the clean run's {name!r} has shape {tuple(clean.shape)}, this run's {tuple(act.shape)}: "
                    f"patch between prompts with the same number of tokens."
                )
            if clean.shape[0] not in (1, act.shape[0]):
                raise PromptError(
                    f"the clean cache holds {clean.shape[0]} prompts, this run {act.shape[0]}: cache one clean "
                    f"prompt (it is broadcast over the batch) or as many as the run has."
                )
            act = act.clone()
            for position, head in by_hook[name]:
                index: tuple[Any, ...] = (slice(None), slice(None) if position is None else position)
                if head is not None:
                    index = index + (head,)
                act[index] = clean[index].to(act)
            return act

        return hook

    return [(name, make(name)) for name in by_hook]
