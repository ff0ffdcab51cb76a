"""The GPU code path, exercised on a CPU-only PyTorch build with the package's own code.

No GPU is lent to this project's sessions, so what differs on CUDA is tested here: the memory
guard's CUDA budget (``torch.cuda.mem_get_info``, faked; no real CUDA call is made), reduced
precision weights (bfloat16 / float16) with float32 probe construction (formed-F and
matrix-free Lanczos Fisher, SDPA attention on the tiny bridge), and device placement of
prompts and results.
"""

import re

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import assert_close, tiny_model
from tl_jacobian_scopes.models.access import ModelAccess
from tl_jacobian_scopes.scopes import engine, probes

PROMPT = "the cat sat on the mat and the dog ran to the big red house"
GiB = 2**30


@pytest.fixture(scope="module")
def llama32():
    return tiny_model("llama", "bridge")[0]


# ---- memory guard on CUDA ---------------------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch, llama32):
    """``ModelAccess`` reports a CUDA device; ``mem_get_info`` answers ``free[0]`` bytes free."""
    free = [0]
    asked = []

    def mem_get_info(device=None):
        asked.append(torch.device(device))
        return free[0], 80 * GiB

    monkeypatch.delenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(ModelAccess, "input_device", property(lambda self: torch.device("cuda", 0)))
    return ModelAccess(llama32), free, asked


def test_the_cuda_budget_comes_from_mem_get_info_not_host_memory(fake_cuda):
    access, free, asked = fake_cuda
    free[0] = 3 * GiB
    assert engine.available_memory(access.input_device) == 3 * GiB
    assert engine._budget(access) == int(0.8 * 3 * GiB)
    assert asked and all(d.type == "cuda" for d in asked)


def test_the_guard_on_cuda_refuses_with_the_longest_prompt_that_fits(fake_cuda):
    access, free, _ = fake_cuda
    kernel = engine.attention_kernel(access)
    n_tokens = 4096
    need = engine.scope_memory(access, n_tokens, kernel=kernel)
    free[0] = need // 4  # budget 0.8 * need / 4: a quarter of the prompt's need is free
    with pytest.raises(tjs.ScopeMemoryError, match=r"cuda:0.*at most about (\d+) tokens") as exc:
        engine.check_memory(access, n_tokens)
    fits = int(re.search(r"at most about (\d+) tokens", str(exc.value)).group(1))
    budget = int(0.8 * free[0])
    assert 1 <= fits < n_tokens
    assert engine.scope_memory(access, fits, kernel=kernel) <= budget, "the suggested length does not fit"
    # Near the longest that fits (the guard shrinks by 10% steps): 1.15x it no longer fits.
    assert engine.scope_memory(access, int(fits / 0.9) + 1, kernel=kernel) > budget
    assert isinstance(exc.value, tjs.ScopeError)


def test_the_guard_on_cuda_passes_with_enough_free_memory(fake_cuda):
    access, free, asked = fake_cuda
    free[0] = 2 * engine.scope_memory(access, 4096, kernel=engine.attention_kernel(access))
    engine.check_memory(access, 4096)
    assert asked, "mem_get_info was not consulted"
    # The probe chunk size follows the same CUDA budget: plenty of room -> the cap.
    assert engine.probe_chunk_size(access, 64, n_probes=16) == 16
    free[0] = engine.forward_memory(access, 64, kernel=engine.attention_kernel(access))
    assert engine.probe_chunk_size(access, 64, n_probes=16) == 1


# ---- reduced precision ----------------------------------------------------------------------


def _ranks(x):
    return x.argsort().argsort().double()


def _spearman(a, b):
    return float(torch.corrcoef(torch.stack([_ranks(a), _ranks(b)]))[0, 1])


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def low_precision(request):
    model = tiny_model("llama", "bridge")[0].to(request.param)
    assert model.W_U.dtype == request.param
    return model


@pytest.mark.parametrize("method, options, lanczos", [
    ("semantic", {"target": "the"}, False), ("temperature", {}, False),
    ("fisher", {"rank": 1}, False), ("fisher", {"rank": 2}, False),
    ("fisher", {"rank": 1}, True), ("fisher", {"rank": 2}, True),
])
def test_low_precision_scores_match_float32(llama32, low_precision, monkeypatch, method, options, lanczos):
    # The cost model picks formed F for d_model=32; force each path so both run in low precision.
    monkeypatch.setattr(probes, "iterative_is_cheaper", lambda d_model, rank: lanczos)
    solved = []
    real_iterative = probes.fisher_top_eigenpairs_iterative

    def spy_iterative(W_U, probs, rank, *args, **kwargs):
        # The default block budget (half the cost of forming F) is too small to converge at
        # d_model=32, which would hand over to the formed F; the full Krylov space converges.
        out = real_iterative(W_U, probs, rank, max_blocks=W_U.shape[0] // rank)
        solved.append((W_U.dtype, probs.dtype, out[0].dtype, out[1].dtype, bool(out[2].all())))
        return out

    monkeypatch.setattr(probes, "fisher_top_eigenpairs_iterative", spy_iterative)
    sdpa = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy_sdpa(q, *args, **kwargs):
        sdpa.append(q.dtype)
        return real_sdpa(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)

    ref = tjs.jacobian_scope(llama32, PROMPT, method, **options)
    tjs.temperature_scope(low_precision, PROMPT)  # the once-per-model output self-check runs its own SDPA pass
    sdpa.clear()
    low = tjs.jacobian_scope(low_precision, PROMPT, method, **options)

    dtype = low_precision.W_U.dtype
    assert ref.scores.dtype == torch.float32
    assert sdpa == [dtype] * low_precision.cfg.n_layers, "the tiny bridge did not run SDPA in low precision"
    assert low.scores.dtype == torch.float32 and torch.isfinite(low.scores).all()
    assert low.predicted == ref.predicted
    assert _spearman(low.scores, ref.scores) >= 0.95
    assert_close(low.scores, ref.scores, rtol=5e-2)
    if method == "fisher":
        if lanczos:
            # The matrix-free solver ran on the low-precision W_U and accumulated in float32.
            assert solved and solved[-1] == (dtype, torch.float32, torch.float32, torch.float32, True)
        else:
            assert not solved
        for key in ("eigenvalues", "trace_F", "captured_trace", "entropy"):
            got, want = torch.tensor(low.params[key]), torch.tensor(ref.params[key])
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, rtol=5e-2, atol=0, msg=key)


def test_fisher_probe_construction_is_float32_on_low_precision_weights(low_precision):
    """The probes themselves (p, F, F v) are float32 whatever the weights' dtype."""
    W_U = low_precision.W_U.detach()
    probs = torch.softmax(torch.randn(3, W_U.shape[1], generator=torch.Generator().manual_seed(0)), -1)
    F = probes.fisher_matrix(W_U, probs[0])
    assert F.dtype == torch.float32
    v = torch.randn(3, 2, W_U.shape[0])
    mean = torch.stack([probes.mean_unembedding(W_U, p) for p in probs])
    Fv = probes.fisher_apply(W_U, probs, mean, v)
    assert mean.dtype == Fv.dtype == torch.float32
    # Independent: F formed in float64 from the same (rounded) weights.
    W = W_U.double()
    for i in range(3):
        m = W @ probs[i].double()
        F64 = (W * probs[i].double()) @ W.T - torch.outer(m, m)
        torch.testing.assert_close(Fv[i].double(), v[i].double() @ F64, rtol=1e-4, atol=1e-5)
    evals, evecs = probes.fisher_top_eigenpairs_iterative(W_U, probs, 2)[:2]
    assert evals.dtype == evecs.dtype == torch.float32


# ---- device placement -------------------------------------------------------------------------


def test_a_meta_device_prompt_is_refused_with_the_fix(llama32):
    tokens = llama32.to_tokens(PROMPT)[0].to("meta")
    with pytest.raises(tjs.PromptError, match="meta device.*to_tokens"):
        tjs.jacobian_scope(llama32, tokens, "semantic")


def test_results_are_on_cpu_and_token_prompts_in_any_integer_dtype_work(llama32):
    tokens = llama32.to_tokens(PROMPT)[0]
    base = tjs.jacobian_scope(llama32, tokens, "fisher", rank=1, internals=True)
    narrow = tjs.jacobian_scope(llama32, tokens.to(torch.int32), "fisher", rank=1, internals=True)
    torch.testing.assert_close(narrow.scores, base.scores)
    tensors = [base.scores, base.tokens, base.layer_scores, base.attn_scores, base.mlp_scores, base.head_scores]
    assert all(t is not None and t.device.type == "cpu" for t in tensors)
    assert all(t.device.type == "cpu" for t in base.internal_norms.values())
