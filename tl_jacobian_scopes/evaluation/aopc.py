"""The paper's deletion (AOPC) protocol and leave-one-out agreement (docs/method.md §5).

Rank tokens by score, zero the input embeddings of the top ``n = max(1, int(T * f))``
for ``f`` in (0.05, 0.1, 0.2), and measure ``Δ(f) = log p_abl(ŷ) - log p_orig(ŷ)`` at the
explained position (more negative = more faithful);
``AOPC = 0.025 (Δ.05 + Δ.1) + 0.05 (Δ.1 + Δ.2)``.

Choices where the paper is silent: ``T`` counts the text's tokens (BOS excluded), and
BOS is never ablated (zeroing the attention-sink token would dominate every method);
tokens after the explained position are never candidates (they cannot matter).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import OptionError, PositionError, TargetError
from ..models.access import ModelAccess
from .baselines import final_distribution
from .interventions import ablate_positions

FRACTIONS = (0.05, 0.1, 0.2)


def aopc(deltas: Sequence[float]) -> float:
    """The paper's trapezoid over the three fractions (0.05, 0.1, 0.2)."""
    if len(deltas) != len(FRACTIONS):
        raise OptionError(f"aopc needs one Δ per fraction {FRACTIONS}, got {len(deltas)} values.")
    d05, d10, d20 = deltas
    return 0.025 * (d05 + d10) + 0.05 * (d10 + d20)


def candidates(n_tokens: int, position: int, has_bos: bool) -> Tensor:
    """Positions that may be ablated: the text's tokens up to the explained position."""
    return torch.arange(1 if has_bos else 0, position + 1)


def n_ablated(n_text_tokens: int, fraction: float) -> int:
    return max(1, int(n_text_tokens * fraction))


def top_positions(scores: Tensor, pool: Tensor, n: int) -> Tensor:
    """The ``n`` highest-scoring positions of ``pool`` (ties broken by position)."""
    order = torch.argsort(scores[pool].float(), descending=True, stable=True)
    return pool[order[:n]]


def deletion_deltas(
    model: Any,
    tokens: Tensor,
    position: int,
    target: int,
    scores: Mapping[str, Tensor],
    has_bos: bool,
    fractions: Sequence[float] = FRACTIONS,
) -> dict[str, list[float]]:
    """``Δ(f)`` for every method's ranking, all ablations in one batched forward pass.

    Args:
        model: The model.
        tokens: ``[pos]`` token ids.
        position: Explained position.
        target: The explained token ŷ (the model's argmax at ``position``).
        scores: Method name -> per-token scores.
        has_bos: Whether ``tokens[0]`` is a BOS the model prepended.

    Raises:
        PositionError: ``position`` is outside the tokens, or no text token lies at or before
            it (nothing to ablate: every Δ would be 0).
        TargetError: ``target`` is not a token id of the model.
        OptionError: a score vector whose length is not the number of tokens.
    """
    access = ModelAccess(model)
    tokens = tokens.reshape(-1).to(access.input_device)
    if not 0 <= position < len(tokens):
        raise PositionError(f"position {position} is outside the {len(tokens)} tokens: pass 0 to {len(tokens) - 1}.")
    pool = candidates(len(tokens), position, has_bos)
    if len(pool) == 0:
        raise PositionError(
            f"No text token at or before position {position} to ablate: explain a later position "
            "(the text needs at least 2 tokens after BOS)."
        )
    if not 0 <= int(target) < access.d_vocab:
        raise TargetError(f"target {target} is not a token id of the model (0 to {access.d_vocab - 1}).")
    for name, s in scores.items():
        if s.reshape(-1).shape[0] != len(tokens):
            raise OptionError(f"scores[{name!r}] has {s.numel()} values for {len(tokens)} tokens: pass one score per token.")
    n_text = len(tokens) - int(has_bos)
    names = list(scores)
    mask = torch.zeros(len(names) * len(fractions), len(tokens), dtype=torch.bool)
    for i, name in enumerate(names):
        for j, f in enumerate(fractions):
            mask[i * len(fractions) + j, top_positions(scores[name].reshape(-1).cpu(), pool, n_ablated(n_text, f))] = True
    p_orig = final_distribution(access, tokens[None], position)[0]
    p_abl = final_distribution(access, tokens.expand(len(mask), -1), position, ablate_positions(mask))
    delta = (p_abl[:, target].clamp_min(1e-30).log() - p_orig[target].clamp_min(1e-30).log()).cpu()
    return {name: delta[i * len(fractions) : (i + 1) * len(fractions)].tolist() for i, name in enumerate(names)}


def loo_percentile(method_scores: Tensor, loo_scores: Tensor, pool: Tensor) -> float:
    """Where a method's top token falls in the leave-one-out KL ranking, as a percentile
    (0 = LOO's most influential token; lower is better): the share of candidates whose
    LOO KL is strictly larger than that of the method's top token."""
    if len(pool) == 0:
        raise PositionError("No candidate positions: the LOO percentile needs at least one token to rank.")
    best = top_positions(method_scores, pool, 1)[0]
    return 100.0 * float((loo_scores[pool] > loo_scores[best]).sum()) / len(pool)
