"""Matrix-free top eigenpairs of F (block Lanczos) against eigh of the explicitly formed F."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import assert_close
from tl_jacobian_scopes.scopes import probes as P


def reference_fisher(W_U, p):
    """F in float64 straight from the definition Σ_v p_v (w_v - μ)(w_v - μ)ᵀ."""
    W, p = W_U.double(), p.double()
    centered = W - (W @ p)[:, None]
    return (centered * p) @ centered.T


def top_eigh(F, k):
    evals, evecs = torch.linalg.eigh(F)
    return evals.flip(0)[:k], evecs.flip(1)[:, :k].T


def random_case(d=48, V=3000, n=5, peak=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    W_U = torch.randn(d, V, generator=g)
    probs = torch.softmax(peak * torch.randn(n, V, generator=g), dim=-1)
    return W_U, probs


@pytest.mark.parametrize("rank", [1, 4])
@pytest.mark.parametrize("peak", [1.0, 6.0])
def test_iterative_matches_eigh_of_formed_F(rank, peak):
    W_U, probs = random_case(peak=peak)
    # Random W gives a crowded spectrum (real F have wide gaps): allow the full Krylov space.
    evals, evecs, converged = P.fisher_top_eigenpairs_iterative(W_U, probs, rank, max_blocks=48 // rank)
    assert bool(converged.all())
    for i in range(probs.shape[0]):
        want_vals, want_vecs = top_eigh(reference_fisher(W_U, probs[i]), rank + 1)
        gap = float(want_vals[rank - 1] / want_vals[rank]) - 1  # ties are tested below
        torch.testing.assert_close(evals[i].double(), want_vals[:rank], rtol=1e-5, atol=1e-6 * float(want_vals[0]))
        # Eigenvectors up to sign: |<u_i, v_i>| = 1.
        cos = (evecs[i].double() * want_vecs[:rank]).sum(-1).abs()
        # Angle ≤ residual / gap (Davis-Kahan), residual ≤ 1e-5·λ₁.
        assert float(cos.min()) > 1 - max(1e-6, (2e-5 / gap) ** 2)


def test_iterative_is_more_accurate_than_float32_formed_F_on_peaked_distributions():
    W_U, _ = random_case(n=3)
    logits = torch.randn(3, W_U.shape[1], generator=torch.Generator().manual_seed(5))
    logits[:, :3] += torch.tensor([[14.0], [16.0], [18.0]]) * torch.eye(3)
    probs = torch.softmax(logits, dim=-1)
    assert float(probs.max(dim=-1).values.min()) > 0.9  # a near one-hot p: F is a small difference
    evals, _, _ = P.fisher_top_eigenpairs_iterative(W_U, probs, 2, max_blocks=24)
    for i in range(3):
        want, _ = top_eigh(reference_fisher(W_U, probs[i]), 2)
        formed, _ = P.fisher_eigenpairs(P.fisher_matrix(W_U, probs[i]), 2)
        err_iterative = float((evals[i].double() - want).abs().max())
        err_formed = float((formed.double() - want).abs().max())
        assert err_iterative <= 2 * err_formed + 1e-6 * float(want[0])


SMALL = dict(max_blocks=12)  # d = 24: the default cap (half of forming F's cost) is tiny here


def tied_case(eps=0.0, d=24, V=400, seed=1):
    """F with λ₁ = λ₂ (eps = 0) on span(e₀, e₁): tokens ±a·e₀ and ±a(1+eps)·e₁ carry half the mass;
    the rest live in the other coordinates with small norms."""
    g = torch.Generator().manual_seed(seed)
    W_U = torch.zeros(d, V)
    a = 10.0
    W_U[0, 0], W_U[0, 1], W_U[1, 2], W_U[1, 3] = a, -a, a * (1 + eps), -a * (1 + eps)
    W_U[2:, 4:] = torch.randn(d - 2, V - 4, generator=g)
    probs = torch.cat([torch.full((4,), 0.125), torch.full((V - 4,), 0.5 / (V - 4))])
    return W_U, probs[None]


def test_tie_rank1_returns_a_unit_vector_of_the_tied_eigenspace():
    """Rank 1 with λ₁ = λ₂: the top-1 eigenvector is not unique. We return some unit vector u of the
    tied eigenspace (deterministic), so λ₁‖Jᵀu‖² lies between λ₁ times the extreme eigenvalues of
    the 2x2 matrix E J Jᵀ Eᵀ (E = the eigenspace), and rank 2 (which covers the whole eigenspace)
    is basis-independent and matches eigh exactly."""
    W_U, probs = tied_case()
    lam = 0.25 * 100.0
    evals, evecs, converged = P.fisher_top_eigenpairs_iterative(W_U, probs, 1, **SMALL)
    assert bool(converged.all())
    torch.testing.assert_close(float(evals[0, 0]), lam, rtol=1e-5, atol=0)
    u = evecs[0, 0].double()
    assert float(u[:2].norm()) > 1 - 1e-6  # inside span(e₀, e₁)
    J = torch.randn(24, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # ∂y/∂x for one token
    score = lam * float((J.T @ u).pow(2).sum())
    M = J[:2] @ J[:2].T
    low, high = torch.linalg.eigvalsh(M).tolist()
    assert lam * low * (1 - 1e-6) <= score <= lam * high * (1 + 1e-6)
    # Same answer twice (deterministic start).
    again = P.fisher_top_eigenpairs_iterative(W_U, probs, 1, **SMALL)[1]
    assert torch.equal(again, evecs)
    # Rank 2: the tied pair in full.
    evals2, evecs2, converged2 = P.fisher_top_eigenpairs_iterative(W_U, probs, 2, **SMALL)
    assert bool(converged2.all())
    want_vals, want_vecs = top_eigh(reference_fisher(W_U, probs[0]), 2)
    torch.testing.assert_close(evals2[0].double(), want_vals, rtol=1e-5, atol=0)
    s_iter = (evals2[0].double()[:, None] * (evecs2[0].double() @ J).pow(2)).sum()
    s_ref = (want_vals[:, None] * (want_vecs @ J).pow(2)).sum()
    torch.testing.assert_close(s_iter, s_ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("eps", [1e-3, 1e-6])
def test_near_tie_matches_eigh_subspace(eps):
    W_U, probs = tied_case(eps)
    evals, evecs, converged = P.fisher_top_eigenpairs_iterative(W_U, probs, 2, **SMALL)
    assert bool(converged.all())
    want_vals, want_vecs = top_eigh(reference_fisher(W_U, probs[0]), 2)
    torch.testing.assert_close(evals[0].double(), want_vals, rtol=1e-5, atol=0)
    # The span of the pair is well defined even when the individual vectors are not.
    overlap = torch.linalg.svdvals(evecs[0].double() @ want_vecs.T)
    assert float(overlap.min()) > 1 - 1e-6


def test_bfloat16_unembedding_accumulates_in_float32():
    W_U, probs = random_case(n=2)
    W_bf16 = W_U.bfloat16()
    evals, evecs, _ = P.fisher_top_eigenpairs_iterative(W_bf16, probs, 2, max_blocks=24)
    assert evals.dtype == evecs.dtype == torch.float32
    want, _ = top_eigh(reference_fisher(W_bf16.float(), probs[0]), 2)
    torch.testing.assert_close(evals[0].double(), want, rtol=1e-5, atol=0)


def test_unconverged_positions_fall_back_to_formed_F(monkeypatch):
    W_U, probs = random_case(n=3)
    _, _, converged = P.fisher_top_eigenpairs_iterative(W_U, probs, 2, max_blocks=1)
    assert not bool(converged.any())
    real = P.fisher_top_eigenpairs_iterative
    monkeypatch.setattr(P, "fisher_top_eigenpairs_iterative",
                        lambda W, p, k, **kw: real(W, p, k, max_blocks=1, **kw))
    evals, evecs = P.fisher_top_eigenpairs(W_U, probs, 2)
    for i in range(3):
        want, _ = top_eigh(reference_fisher(W_U, probs[i]), 2)
        torch.testing.assert_close(evals[i].double(), want, rtol=1e-4, atol=0)


def test_cost_model_and_trace():
    assert P.iterative_is_cheaper(576, 1) and P.iterative_is_cheaper(576, 16)
    assert not P.iterative_is_cheaper(576, 64) and not P.iterative_is_cheaper(32, 2)
    W_U, probs = random_case(n=2)
    want = torch.stack([torch.trace(reference_fisher(W_U, p)) for p in probs])
    torch.testing.assert_close(P.fisher_trace(W_U, probs).double(), want, rtol=1e-5, atol=0)


TEXT = ("The old lighthouse keeper climbed the stairs every evening, lit the lamp, and watched the ships "
        "pass far out at sea until the grey morning came over the quiet harbour town.")


@pytest.mark.parametrize("rank", [1, 4])
def test_default_model_iterative_scores_equal_formed_F_scores(default_model, monkeypatch, rank):
    fast = tjs.fisher_scope(default_model, TEXT, rank=rank, positions="all")
    assert 30 <= len(fast.str_tokens) <= 50
    monkeypatch.setattr(P, "iterative_is_cheaper", lambda d, k: False)
    formed = tjs.fisher_scope(default_model, TEXT, rank=rank, positions="all")
    for pos in range(len(fast.str_tokens)):
        assert_close(fast.scores[pos], formed.scores[pos], rtol=2e-3)
        assert fast[pos].params["eigenvalues"] == pytest.approx(formed[pos].params["eigenvalues"], rel=1e-3)
        assert fast[pos].params["trace_F"] == pytest.approx(formed[pos].params["trace_F"], rel=1e-3)


def test_shared_mean_and_norms_and_cached_chunks_give_the_same_products(monkeypatch):
    """The precomputed W_U p and ‖w_v‖² the Fisher scope shares, and fisher_apply's small chunks,
    against the float64 definition."""
    W_U, probs = random_case(n=3, V=2500)
    for layout in (W_U, W_U.T.contiguous().T):  # HookedTransformer's row-major W_U, a bridge's transposed one
        torch.testing.assert_close(P.unembedding_sq_norms(layout).double(), W_U.double().pow(2).sum(0),
                                   rtol=1e-5, atol=0)
    mean, sq = P.mean_unembedding(W_U, probs), P.unembedding_sq_norms(W_U)
    want = torch.stack([torch.trace(reference_fisher(W_U, p)) for p in probs])
    torch.testing.assert_close(P.fisher_trace(W_U, probs, mean, sq).double(), want, rtol=1e-5, atol=0)
    vectors = torch.randn(3, 2, W_U.shape[0], generator=torch.Generator().manual_seed(1))
    exact = torch.stack([vectors[i].double() @ reference_fisher(W_U, probs[i]) for i in range(3)])
    for chunk in (1000, 7):  # several chunks, and a last partial one
        monkeypatch.setattr(P, "APPLY_CHUNK", chunk)
        torch.testing.assert_close(P.fisher_apply(W_U, probs, mean, vectors).double(), exact, rtol=1e-4, atol=1e-5)
    evals, evecs, _ = P.fisher_top_eigenpairs_iterative(W_U, probs, 1, max_blocks=48, mean=mean, sq_norms=sq)
    for i in range(3):
        want_vals, want_vecs = top_eigh(reference_fisher(W_U, probs[i]), 1)
        torch.testing.assert_close(evals[i].double(), want_vals, rtol=1e-5, atol=0)


def test_a_narrow_model_forms_F_and_a_wide_one_keeps_lanczos():
    """Issue 24: at d_model = 72 forming F (one pass over W_U) beats 18 memory-bound products."""
    assert not P.iterative_is_cheaper(72, 1) and not P.iterative_is_cheaper(P.NARROW, 1)
    assert P.iterative_is_cheaper(P.NARROW + 64, 1) and P.iterative_is_cheaper(576, 1)


def test_the_apply_chunk_keeps_its_bytes_on_cpu_and_is_large_on_a_gpu():
    W = torch.zeros(72, 49152)
    assert P.apply_chunk(W, 2) == P.APPLY_CHUNK * 8 and P.apply_chunk(torch.zeros(576, 10), 2) == P.APPLY_CHUNK
    meta = torch.empty(576, 49152, device="meta")  # stands for a GPU tensor (not a CPU one)
    assert P.apply_chunk(meta, 2) >= 49152 and P.apply_chunk(meta, 2**20) == P.APPLY_CHUNK
