"""At scale on the embedded model: the stochastic Fisher's ranking, and bfloat16."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.evaluation import spearman  # tie-aware (average ranks)
from tl_jacobian_scopes.models.loading import bridge_from_hf, default_backend, hooked_from_hf, load_default_hf_model

TEXT = (
    "The old lighthouse keeper climbed the stairs every night, lit the lamp, and watched the ships "
    "pass safely into the harbor of the"
)


@pytest.fixture
def model(default_model):
    return default_model  # loaded once per session (conftest.py)


def test_stochastic_fisher_ranks_like_exact_at_recommended_probes(model):
    exact = tjs.fisher_scope(model, TEXT, rank=None)
    for seed in (0, 1):
        est = tjs.fisher_scope(model, TEXT, rank=None, samples=24, seed=seed)  # deflate=8 by default
        assert spearman(est.scores, exact.scores) >= 0.95
        assert est.stderr is not None and bool((est.stderr >= 0).all())


def test_bfloat16_gives_the_same_top_tokens_as_float32(model):
    hf, tokenizer = load_default_hf_model()
    hf = hf.to(torch.bfloat16)
    if default_backend() == "hooked":
        half = hooked_from_hf(hf, tokenizer, "cpu")
    else:
        half = bridge_from_hf(hf, tokenizer, tjs.DEFAULT_MODEL_NAME, device="cpu")
    assert half.W_U.dtype == torch.bfloat16
    for fn, kwargs in [
        (tjs.semantic_scope, dict(target=" Paris")),
        (tjs.temperature_scope, {}),
        (tjs.fisher_scope, dict(rank=1)),
    ]:
        full, low = fn(model, "The capital of France is", **kwargs), fn(half, "The capital of France is", **kwargs)
        assert low.predicted_str == full.predicted_str == " Paris"
        assert low.top(1)[0].position == full.top(1)[0].position, fn.__name__
        assert {t.position for t in low.top(3)} == {t.position for t in full.top(3)}, fn.__name__
        assert low.scores.dtype == torch.float32  # accumulated in float32
        assert spearman(low.scores, full.scores) > 0.8
