"""Probe vectors in the space of y (docs/method.md §2), computed in float32.

The model's output is ``z = g(u)``, ``u = W_Uᵀ y + b_U``, with an elementwise ``g`` (the
identity for most architectures, docs/method.md §1.1) and ``A = ∂z/∂y = diag(g'(u)) W_Uᵀ``.
Every function takes ``slope`` = ``g'(u)`` (:data:`~..models.readout.Slope`: None for the
identity, a number for a constant scale, a ``[..., V]`` tensor otherwise): A's rows are W_U's
columns scaled by ``g'(u_v)``, so no scaled copy of W_U is made.

- Semantic: ``Aᵀe_target = g'(u_t) w_t`` (minus ``g'(u_c) w_c`` for a contrast).
- Temperature: ŷ = y/‖y‖, the direction in which ‖y‖ (the inverse temperature) grows.
- Fisher: eigenpairs of F = Aᵀ (diag(p) - p pᵀ) A, formed over vocabulary chunks so that
  no V x V (or even V x d float32 copy of a bf16 W_U) is ever materialised.
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from ..models.readout import IDENTITY, LogitTransform, Slope, slope_row

VOCAB_CHUNK = 8192
#: Columns per chunk in :func:`fisher_apply`: 1024 x d_model float32 (2.4 MB at d=576) stays in
#: cache between its two matmuls, so a product reads W_U from memory about once, not twice
#: (14 instead of 19 ms per product on the default model, one CPU thread).
APPLY_CHUNK = 1024


def apply_chunk(W_U: Float[Tensor, "d_model d_vocab"], rows: int) -> int:
    """Vocabulary columns per chunk of :func:`fisher_apply` for ``rows`` vectors.

    On a CPU, :data:`APPLY_CHUNK` columns at ``d_model = 576`` and as many bytes at any other
    width (8,192 columns at 72: a narrow model would otherwise pay Python per chunk, 48 chunks a
    product, more than the arithmetic). On a GPU, where every chunk is a few kernel launches, as
    few chunks as keep the ``rows x chunk`` intermediate under 256 MiB (one on the default model).
    """
    if W_U.device.type != "cpu":
        return max(APPLY_CHUNK, 2**26 // max(1, rows))
    return max(APPLY_CHUNK, APPLY_CHUNK * 576 // max(1, W_U.shape[0]))


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


def output_at(
    y: Float[Tensor, "... d_model"], W_U: Float[Tensor, "d_model d_vocab"], b_U: Optional[Tensor],
    transform: LogitTransform = IDENTITY, need_slope: bool = False,
) -> tuple[Float[Tensor, "... d_vocab"], Slope]:
    """The model's logits ``z = g(y @ W_U + b_U)`` in float32, and ``g'(u)`` when ``need_slope``
    (None for the identity: then nothing beyond :func:`logits_at` runs)."""
    return transform.apply(logits_at(y, W_U, b_U), need_slope)


def _weighted(probs: Tensor, slope: Slope, power: int) -> Tensor:
    """``p ⊙ g'(u)^power`` (``p`` itself for the identity)."""
    if slope is None:
        return probs
    if isinstance(slope, Tensor):
        return probs * slope.to(probs).pow(power)
    return probs * float(slope) ** power


def _slope_at(slope: Slope, index: int) -> Union[float, Tensor]:
    """``g'(u_index)`` (``[...]`` for a batch of positions)."""
    if slope is None:
        return 1.0
    if isinstance(slope, Tensor):
        return slope[..., index, None].float()
    return float(slope)


def mean_unembedding(
    W_U: Float[Tensor, "d_model d_vocab"], probs: Float[Tensor, "... d_vocab"], slope: Slope = None
) -> Float[Tensor, "... d_model"]:
    """``Aᵀp = W_U (p ⊙ g'(u))``: the probability-weighted mean of A's rows, in float32."""
    probs = _weighted(probs.detach().float().to(W_U.device), slope, 1)
    total = torch.zeros(*probs.shape[:-1], W_U.shape[0], dtype=torch.float32, device=W_U.device)
    for cols, W in _vocab_chunks(W_U):
        total = total + probs[..., cols] @ W.T
    return total


def semantic_probe(
    W_U: Float[Tensor, "d_model d_vocab"], target: int, contrast: Optional[int] = None, slope: Slope = None
) -> Float[Tensor, "... d_model"]:
    """``∂z_target/∂y = g'(u_t) w_target`` (minus ``g'(u_c) w_contrast`` for a logit difference);
    ``[..., d_model]`` for a ``[..., V]`` slope."""
    v = W_U[:, target].detach().float()
    if slope is not None:
        v = v * _slope_at(slope, target)
    if contrast is not None:
        w = W_U[:, contrast].detach().float()
        v = v - (w if slope is None else w * _slope_at(slope, contrast))
    return v


def temperature_probe(y: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """ŷ = y/‖y‖ (detached): v·J gives the gradient of ‖y‖."""
    y32 = y.detach().float()
    unit: Tensor = y32 / y32.norm(dim=-1, keepdim=True)
    return unit


def fisher_matrix(
    W_U: Float[Tensor, "d_model d_vocab"], probs: Float[Tensor, " d_vocab"], slope: Slope = None
) -> Float[Tensor, "d_model d_model"]:
    """``F = Aᵀ diag(p) A - (Aᵀp)(Aᵀp)ᵀ`` (``A = diag(g'(u)) W_Uᵀ``) in float32, on W_U's device."""
    probs = probs.detach().float().to(W_U.device)
    weights, mean_weights = _weighted(probs, slope, 2), _weighted(probs, slope, 1)
    d_model = W_U.shape[0]
    F = torch.zeros(d_model, d_model, dtype=torch.float32, device=W_U.device)
    mean = torch.zeros(d_model, dtype=torch.float32, device=W_U.device)
    for cols, W in _vocab_chunks(W_U):
        F.addmm_(W * weights[cols], W.T)
        mean.add_(W @ mean_weights[cols])
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
    slope: Slope = None,
) -> Float[Tensor, "n_samples d_model"]:
    """Random probes ``a = Bᵀ z`` with ``BᵀB = F`` and Rademacher ``z`` in output space.

    ``B = diag(√p)(A - 1 mᵀ)`` (``A = diag(g'(u)) W_Uᵀ``, ``m = Aᵀp``), so ``E[a aᵀ] = F`` and
    ``E‖Jᵀ a‖² = tr(Jᵀ F J)``: the average over probes is an unbiased estimate of the
    exact Fisher score. Costs one pass over W_U; F itself is never formed.
    """
    probs = probs.detach().float().to(W_U.device)
    z = torch.randint(0, 2, (n_samples, W_U.shape[-1]), generator=generator, device=W_U.device).float() * 2 - 1
    sqrt_p = probs.sqrt()
    row_weights, mean_weights = _weighted(sqrt_p, slope, 1), _weighted(probs, slope, 1)
    out = torch.zeros(n_samples, W_U.shape[0], dtype=torch.float32, device=W_U.device)
    mean = torch.zeros(W_U.shape[0], dtype=torch.float32, device=W_U.device)
    weight_sum = torch.zeros(n_samples, dtype=torch.float32, device=W_U.device)
    for cols, W in _vocab_chunks(W_U):
        zs = z[:, cols] * sqrt_p[cols]
        out.addmm_(zs if slope is None else z[:, cols] * row_weights[cols], W.T)
        weight_sum += zs.sum(dim=-1)
        mean.add_(W @ mean_weights[cols])
    return out - weight_sum[:, None] * mean[None, :]


# ---- matrix-free top eigenpairs of F ------------------------------------------------------

#: Convergence: ``‖F u - θ u‖ ≤ RESIDUAL_TOL·θ₁ + NOISE_FLOOR·Σ_v p_v‖w_v‖²`` for each top-k
#: Ritz pair. The second term is float32 round-off in ``F v``, whose terms (before ``μμᵀ``
#: cancels them) have the size of ``Σ p‖w‖²``: a peaked ``p`` cannot do better, nor can F formed
#: in float32 (it is less accurate there: tests/test_fisher_probes.py).
RESIDUAL_TOL = 1e-5
NOISE_FLOOR = 1e-6
#: Rank 1: weight of the random unit vector added to the unit ``w_top - μ`` in Lanczos' start vector.
START_RANDOM_SHARE = 0.3


def expected_products(rank: int) -> int:
    """Products ``F v`` per position that block Lanczos typically needs (default model: ~18 at
    rank 1, ~40 at rank 4)."""
    return 8 * rank + 10


def unembedding_sq_norms(W_U: Float[Tensor, "d_model d_vocab"]) -> Float[Tensor, " d_vocab"]:
    """``‖w_v‖²`` of every unembedding column, in float32 (one pass over W_U).

    The fast reduction depends on the layout: ``vector_norm`` over a column's contiguous
    entries (a bridge's ``W_U``, the transposed ``lm_head.weight``: ~5 ms on the default
    model) but squares of a few rows at a time for a row-major ``W_U`` (HookedTransformer's:
    ~10 ms, where ``vector_norm`` over strided entries takes ~150 ms and ``pow(2).sum(0)`` ~25).
    """
    if W_U.stride(0) == 1:
        return torch.cat([torch.linalg.vector_norm(W, dim=0).pow(2) for _, W in _vocab_chunks(W_U)])
    total = torch.zeros(W_U.shape[1], dtype=torch.float32, device=W_U.device)
    for start in range(0, W_U.shape[0], 8):
        rows = W_U[start : start + 8].detach().float()
        total += (rows * rows).sum(dim=0)
    return total


def fisher_trace(
    W_U: Float[Tensor, "d_model d_vocab"],
    probs: Float[Tensor, "... d_vocab"],
    mean: Optional[Float[Tensor, "... d_model"]] = None,
    sq_norms: Optional[Float[Tensor, " d_vocab"]] = None,
    slope: Slope = None,
) -> Float[Tensor, "..."]:
    """``tr F = Σ_v p_v g'(u_v)² ‖w_v‖² - ‖Aᵀp‖²`` without forming F.

    ``mean`` (``Aᵀp``, :func:`mean_unembedding` with the same slope) and ``sq_norms``
    (:func:`unembedding_sq_norms`), when the caller has them, spare a pass over W_U each.
    """
    probs = probs.detach().float().to(W_U.device)
    sq_norms = unembedding_sq_norms(W_U) if sq_norms is None else sq_norms
    mean = mean_unembedding(W_U, probs, slope) if mean is None else mean
    return _weighted(probs, slope, 2) @ sq_norms - mean.pow(2).sum(dim=-1)


def fisher_apply(
    W_U: Float[Tensor, "d_model d_vocab"],
    probs: Float[Tensor, "n d_vocab"],
    mean: Float[Tensor, "n d_model"],
    vectors: Float[Tensor, "n m d_model"],
) -> Float[Tensor, "n m d_model"]:
    """``F_i v = W_U (q_i ⊙ W_Uᵀ v) - μ_i (μ_iᵀ v)`` for ``m`` vectors of each of ``n`` distributions.

    ``probs`` holds the weights ``q = p ⊙ g'(u)²`` (``p`` for the identity) and ``mean`` is
    ``μ = Aᵀp``.

    Two matmuls over each vocabulary chunk (``2·V·d`` per vector); F is never formed. The
    chunks are small enough that the second matmul reads its chunk from cache.
    """
    n, m, d = vectors.shape
    out = torch.zeros_like(vectors)
    flat = vectors.reshape(n * m, d)
    for cols, W in _vocab_chunks(W_U, apply_chunk(W_U, n * m)):
        z = (flat @ W).reshape(n, m, -1) * probs[:, None, cols]
        out.add_((z.reshape(n * m, -1) @ W.T).reshape(n, m, d))
    return out - (vectors @ mean[:, :, None]) * mean[:, None, :]


def _orthonormalize(block: Tensor, basis: Optional[Tensor], generator: torch.Generator) -> Tensor:
    """Columns of ``block`` [n, d, b] made orthonormal and orthogonal to ``basis`` [n, d, M] (CGS2)."""
    for attempt in range(3):
        scale = block.norm(dim=1).clamp_min(1e-30)
        for _ in range(2):
            if basis is not None:
                block = block - basis @ (basis.transpose(1, 2) @ block)
        q: Tensor
        q, r = torch.linalg.qr(block)
        # A column (nearly) inside the span so far (an invariant subspace was found, or a
        # tie): continue with fresh random directions instead.
        weak = r.diagonal(dim1=1, dim2=2).abs() < 1e-5 * scale
        if not bool(weak.any()) or attempt == 2:
            return q
        fresh = torch.randn(block.shape, generator=generator, dtype=block.dtype).to(block.device)
        block = torch.where(weak[:, None, :], fresh, q)
    raise AssertionError("unreachable")


def fisher_top_eigenpairs_iterative(
    W_U: Float[Tensor, "d_model d_vocab"],
    probs: Float[Tensor, "n d_vocab"],
    rank: int,
    max_blocks: Optional[int] = None,
    tol: float = RESIDUAL_TOL,
    mean: Optional[Float[Tensor, "n d_model"]] = None,
    sq_norms: Optional[Float[Tensor, " d_vocab"]] = None,
    slope: Slope = None,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k d_model"], Tensor]:
    """Top-``rank`` eigenpairs of every position's F by block Lanczos, matrix-free.

    Block Krylov subspace ``[X, FX, F²X, ...]`` (block size ``rank``, fully re-orthogonalised)
    with Rayleigh-Ritz on the exact products ``F Q``; all ``n`` distributions advance together,
    so each step is two matmuls of ``[n·rank, d] x [d, V]``, and converged positions drop out.

    Returns:
        ``(eigenvalues [n, k], eigenvectors [n, k, d], converged [n])``, largest first, in
        float32. Positions not converged within ``max_blocks`` have ``converged`` False (their
        pairs are the best Ritz pairs found; :func:`fisher_top_eigenpairs` recomputes them).
    """
    probs = probs.detach().float().to(W_U.device)
    n, d = probs.shape[0], W_U.shape[0]
    b = rank
    # By default at most half the cost of forming F, then the formed F takes over.
    max_blocks = max_blocks if max_blocks is not None else max(2, d // (4 * b))
    max_blocks = min(max_blocks, d // b)
    device = W_U.device
    generator = torch.Generator().manual_seed(0)
    mean = mean_unembedding(W_U, probs, slope) if mean is None else mean
    sq_norms = unembedding_sq_norms(W_U) if sq_norms is None else sq_norms
    top_ids = probs.argmax(dim=-1)
    probs = _weighted(probs, slope, 2)  # F's weights q = p ⊙ g'(u)² from here on
    floor = NOISE_FLOOR * (probs @ sq_norms)  # [n]
    evals = torch.zeros(n, rank, dtype=torch.float32, device=device)
    evecs = torch.zeros(n, rank, d, dtype=torch.float32, device=device)
    converged = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.arange(n, device=device)
    # One random start block for every position: a position's answer does not depend on its batch.
    start = torch.randn(d, b, generator=generator).to(device).expand(n, d, b)
    if rank == 1:
        # Tilted towards the position's own w_top - μ, which F's top direction is usually close
        # to: about 1.3 fewer products on the default model (5.4 instead of 6.7); the random part
        # keeps every eigen-direction in the Krylov space. (Measured at rank 1 only.)
        top = W_U[:, top_ids].T.float()  # [n, d]
        if slope is not None:
            top = top * (slope[torch.arange(n, device=device), top_ids, None].float()
                         if isinstance(slope, Tensor) else float(slope))
        top = top - mean
        top = top / top.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        start = (START_RANDOM_SHARE * start / start.norm(dim=1, keepdim=True) + top[:, :, None])
    Q = _orthonormalize(start, None, generator)  # [n, d, b]
    FQ = fisher_apply(W_U, probs, mean, Q.transpose(1, 2)).transpose(1, 2)
    for step in range(max_blocks):
        H = Q.transpose(1, 2) @ FQ
        H = ((H + H.transpose(1, 2)) / 2).double()
        theta, S = torch.linalg.eigh(H)
        theta, S = theta.flip(-1)[:, :rank], S.flip(-1)[:, :, :rank]
        S32 = S.float()
        ritz = Q @ S32  # [a, d, b]
        residual = (FQ @ S32 - ritz * theta.float()[:, None, :]).norm(dim=1)  # [a, b]
        bound = tol * theta[:, :1].float().clamp_min(0) + floor[active, None]
        done = (residual <= bound).all(dim=1)
        last = step == max_blocks - 1
        keep = done | last
        if bool(keep.any()):
            idx = active[keep]
            evals[idx] = theta[keep].float().clamp_min(0)
            evecs[idx] = ritz[keep].transpose(1, 2)
            converged[idx] = done[keep]
        if last or bool(done.all()):
            break
        stay = ~done
        active, Q, FQ = active[stay], Q[stay], FQ[stay]
        new = _orthonormalize(FQ[:, :, -b:], Q, generator)
        F_new = fisher_apply(W_U, probs[active], mean[active], new.transpose(1, 2)).transpose(1, 2)
        Q, FQ = torch.cat([Q, new], dim=2), torch.cat([FQ, F_new], dim=2)
    return evals, evecs, converged


def iterative_is_cheaper(d_model: int, rank: int) -> bool:
    """Cost model: block Lanczos (:func:`expected_products` of ``2·V·d`` each) vs forming F (``V·d²``).

    A product is two memory-bound passes over W_U, forming F one compute-bound pass: below
    :data:`NARROW` columns forming F wins whatever the count (SmolLM2's depth at d_model = 72,
    Fisher rank 1 per call: 68 ms formed against 95 ms by Lanczos, benchmarks/launch_bound.py).
    """
    return expected_products(rank) * 2 < d_model and d_model > NARROW


#: ``d_model`` at or below which F is formed (:func:`iterative_is_cheaper`).
NARROW = 192


def fisher_top_eigenpairs(
    W_U: Float[Tensor, "d_model d_vocab"],
    probs: Float[Tensor, "n d_vocab"],
    rank: int,
    mean: Optional[Float[Tensor, "n d_model"]] = None,
    sq_norms: Optional[Float[Tensor, " d_vocab"]] = None,
    slope: Slope = None,
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "n k d_model"]]:
    """Top-``rank`` eigenpairs of each position's F, by whichever of the two paths is cheaper.

    Matrix-free block Lanczos when the cost model favours it (positions it does not converge
    for fall back to the formed F); otherwise F is formed and eigendecomposed per position.
    Eigenvectors are rows, eigenvalues largest first, float32. ``mean`` (``W_U p``) and
    ``sq_norms`` as for :func:`fisher_trace`; ``slope``: ``g'(u)`` per position.
    """
    probs = probs.detach().float().to(W_U.device)
    n, d = probs.shape[0], W_U.shape[0]
    if iterative_is_cheaper(d, rank):
        evals, evecs, converged = fisher_top_eigenpairs_iterative(W_U, probs, rank, mean=mean, sq_norms=sq_norms,
                                                                  slope=slope)
    else:
        evals = torch.zeros(n, rank, device=W_U.device)
        evecs = torch.zeros(n, rank, d, device=W_U.device)
        converged = torch.zeros(n, dtype=torch.bool, device=W_U.device)
    for i in (~converged).nonzero().flatten().tolist():
        evals[i], evecs[i] = fisher_eigenpairs(fisher_matrix(W_U, probs[i], slope_row(slope, i)), rank)
    return evals, evecs
