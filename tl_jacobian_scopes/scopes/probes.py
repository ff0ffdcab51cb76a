"""Probe vectors in the space of y (docs/method.md §2), computed in float32.

- Semantic: the unembedding direction of a target (or a target minus a contrast).
- Temperature: ŷ = y/‖y‖, the direction in which ‖y‖ (the inverse temperature) grows.
- Fisher: eigenpairs of F = W^T (diag(p) - p p^T) W, formed over vocabulary chunks so that
  no V x V (or even V x d float32 copy of a bf16 W_U) is ever materialised.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from jaxtyping import Float
from torch import Tensor

VOCAB_CHUNK = 8192


def _vocab_chunks(W_U: Float[Tensor, "d_model d_vocab"], chunk: int = VOCAB_CHUNK) -> Iterator[tuple[slice, Tensor]]:
    for start in range(0, W_U.shape[-1], chunk):
        cols = slice(start, min(start + chunk, W_U.shape[-1]))
        yield cols, W_U[:, cols].float()


def logits_at(
    y: Float[Tensor, "... d_model"], W_U: Float[Tensor, "d_model d_vocab"], b_U: Optional[Tensor]
) -> Float[Tensor, "... d_vocab"]:
    """``z = y @ W_U + b_U`` in float32, for the explained position(s) only."""
    y32 = y.detach().to(device=W_U.device, dtype=torch.float32)
    z = torch.cat([y32 @ W for _, W in _vocab_chunks(W_U)], dim=-1)
    if b_U is not None:
        z = z + b_U.detach().float()
    return z


def mean_unembedding(
    W_U: Float[Tensor, "d_model d_vocab"], probs: Float[Tensor, "... d_vocab"]
) -> Float[Tensor, "... d_model"]:
    """``W_U p``: the probability-weighted mean unembedding direction, in float32."""
    probs = probs.detach().float().to(W_U.device)
    total = torch.zeros(*probs.shape[:-1], W_U.shape[0], dtype=torch.float32, device=W_U.device)
    for cols, W in _vocab_chunks(W_U):
        total = total + probs[..., cols] @ W.T
    return total


def semantic_probe(
    W_U: Float[Tensor, "d_model d_vocab"], target: int, contrast: Optional[int] = None
) -> Float[Tensor, " d_model"]:
    """``w_target`` (or ``w_target - w_contrast`` for a logit difference)."""
    v = W_U[:, target].detach().float()
    if contrast is not None:
        v = v - W_U[:, contrast].detach().float()
    return v


def temperature_probe(y: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """ŷ = y/‖y‖ (detached): v·J gives the gradient of ‖y‖."""
    y32 = y.detach().float()
    unit: Tensor = y32 / y32.norm(dim=-1, keepdim=True)
    return unit


def fisher_matrix(
    W_U: Float[Tensor, "d_model d_vocab"], probs: Float[Tensor, " d_vocab"]
) -> Float[Tensor, "d_model d_model"]:
    """``F = W_U diag(p) W_U^T - (W_U p)(W_U p)^T`` in float32, on W_U's device."""
    probs = probs.detach().float().to(W_U.device)
    d_model = W_U.shape[0]
    F = torch.zeros(d_model, d_model, dtype=torch.float32, device=W_U.device)
    mean = torch.zeros(d_model, dtype=torch.float32, device=W_U.device)
    for cols, W in _vocab_chunks(W_U):
        p = probs[cols]
        F.addmm_(W * p, W.T)
        mean.add_(W @ p)
    F.sub_(torch.outer(mean, mean))
    return (F + F.T) / 2


def fisher_eigenpairs(
    F: Float[Tensor, "d_model d_model"], rank: Optional[int] = None
) -> tuple[Float[Tensor, " k"], Float[Tensor, "k d_model"]]:
    """Top-``rank`` eigenpairs of F (all of them when ``rank`` is None), largest first.

    Returns:
        ``(eigenvalues, eigenvectors)`` with eigenvectors as rows. Round-off negatives of
        the PSD matrix are clipped to zero.
    """
    evals, evecs = torch.linalg.eigh(F.double())
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    if rank is not None:
        evals, evecs = evals[:rank], evecs[:, :rank]
    return evals.float(), evecs.T.float().contiguous()


def fisher_sample_probes(
    W_U: Float[Tensor, "d_model d_vocab"],
    probs: Float[Tensor, " d_vocab"],
    n_samples: int,
    generator: torch.Generator,
) -> Float[Tensor, "n_samples d_model"]:
    """Random probes ``a = A^T z`` with ``A^T A = F`` and Rademacher ``z`` in output space.

    ``A = diag(√p)(W - 1 m^T)`` (``W = W_U^T``, ``m = W_U p``), so ``E[a a^T] = F`` and
    ``E‖J^T a‖² = tr(J^T F J)``: the average over probes is an unbiased estimate of the
    exact Fisher score. Costs one pass over W_U; F itself is never formed.
    """
    probs = probs.detach().float().to(W_U.device)
    z = torch.randint(0, 2, (n_samples, W_U.shape[-1]), generator=generator, device=W_U.device).float() * 2 - 1
    sqrt_p = probs.sqrt()
    out = torch.zeros(n_samples, W_U.shape[0], dtype=torch.float32, device=W_U.device)
    mean = torch.zeros(W_U.shape[0], dtype=torch.float32, device=W_U.device)
    weight_sum = torch.zeros(n_samples, dtype=torch.float32, device=W_U.device)
    for cols, W in _vocab_chunks(W_U):
        zs = z[:, cols] * sqrt_p[cols]
        out.addmm_(zs, W.T)
        weight_sum += zs.sum(dim=-1)
        mean.add_(W @ probs[cols])
    return out - weight_sum[:, None] * mean[None, :]
