"""Every scope against a brute-force Jacobian on tiny random models, on every backend."""

import warnings

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import (
    BACKENDS, KINDS, assert_close, reference_jacobian, reference_scores, tiny_hf_model, tiny_model, tiny_tokenizer,
)
from tl_jacobian_scopes.models.loading import bridge_from_hf, hooked_from_hf

PROMPT = "the cat sat on the mat and the dog ran to the"


@pytest.fixture(scope="module", params=[(k, b) for k in KINDS for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    kind, backend = request.param
    model, hf = tiny_model(kind, backend)
    return model, hf


@pytest.mark.parametrize("position", [-1, 5])
def test_all_scopes_match_brute_force_jacobian(tiny, position):
    model, hf = tiny
    tokens = model.to_tokens(PROMPT)[0]
    pos = position % len(tokens)
    J, y, W_U, b_U = reference_jacobian(hf, tokens, pos)
    target, contrast = int(model.to_single_token("dog")), int(model.to_single_token("cat"))

    cases = [
        (tjs.semantic_scope(model, PROMPT, target="dog", position=position), dict(scope="semantic", target=target)),
        (
            tjs.semantic_scope(model, PROMPT, target="dog", contrast="cat", position=position),
            dict(scope="semantic", target=target, contrast=contrast),
        ),
        (tjs.temperature_scope(model, PROMPT, position=position), dict(scope="temperature")),
        (tjs.fisher_scope(model, PROMPT, rank=1, position=position), dict(scope="fisher", rank=1)),
        (tjs.fisher_scope(model, PROMPT, rank=4, position=position), dict(scope="fisher", rank=4)),
        (tjs.fisher_scope(model, PROMPT, rank=None, position=position), dict(scope="fisher", rank=None)),
    ]
    for result, spec in cases:
        expected = reference_scores(J, y, W_U, b_U, **spec)
        assert result.scores.shape == (len(tokens),)
        assert_close(result.scores, expected)
        assert result.position == pos


def test_exact_fisher_equals_rank_d(tiny):
    model, _ = tiny
    exact = tjs.fisher_scope(model, PROMPT, rank=None)
    full = tjs.fisher_scope(model, PROMPT, rank=model.cfg.d_model)
    assert_close(exact.scores, full.scores, rtol=1e-5)
    assert exact.params["captured_trace"] == pytest.approx(1.0)
    # Rank 1 captures part of the trace, so its scores are strictly smaller in total.
    rank1 = tjs.fisher_scope(model, PROMPT, rank=1)
    assert rank1.scores.sum() < exact.scores.sum()


def test_tokens_after_position_score_zero(tiny):
    model, _ = tiny
    for fn in (tjs.semantic_scope, tjs.temperature_scope, tjs.fisher_scope):
        result = fn(model, PROMPT, position=4)
        assert torch.all(result.scores[5:] == 0), fn.__name__
        assert torch.all(result.scores[:5] > 0), fn.__name__


def test_default_target_is_argmax_and_probabilities_match(tiny):
    model, _ = tiny
    with torch.no_grad():
        probs = torch.softmax(model(PROMPT)[0, -1].double(), -1)
    result = tjs.semantic_scope(model, PROMPT)
    assert result.target == result.predicted == int(probs.argmax())
    assert result.target_prob == pytest.approx(float(probs.max()), rel=1e-4)


def test_token_tensor_prompt_equals_string_prompt(tiny):
    model, _ = tiny
    tokens = model.to_tokens(PROMPT)
    a = tjs.fisher_scope(model, PROMPT)
    b = tjs.fisher_scope(model, tokens)
    c = tjs.fisher_scope(model, tokens[0].tolist())
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.scores, c.scores)
    assert a.str_tokens == b.str_tokens


def test_semantic_contrast_is_linear_in_probe(tiny):
    """‖J^T (w_a - w_b)‖ differs from ‖J^T w_a‖: the contrast really changes the probe."""
    model, _ = tiny
    plain = tjs.semantic_scope(model, PROMPT, target="dog")
    contrast = tjs.semantic_scope(model, PROMPT, target="dog", contrast="cat")
    assert contrast.contrast_str == "cat" and contrast.contrast_prob is not None
    assert not torch.allclose(plain.scores, contrast.scores)


def _processed_copy(kind, backend):
    """The same tiny model with TransformerLens's weight processing (fold_ln, centering)."""
    hf, tok = tiny_hf_model(kind), tiny_tokenizer()
    if backend == "hooked":
        processed = hooked_from_hf(hf, tok, device="cpu")
        processed.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    else:
        processed = bridge_from_hf(hf, tok, f"tiny-{kind}", device="cpu")
        processed.enable_compatibility_mode(disable_warnings=True)
    return processed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_processed_weights_behaviour(kind, backend):
    """fold_ln + center_unembed (docs/method.md): exact Fisher and logit differences are invariant;
    Temperature is refused; single-target Semantic and rank-k Fisher change, with a warning."""
    model, _ = tiny_model(kind, backend)
    processed = _processed_copy(kind, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tjs.ProcessedWeightsWarning)  # invariant: no warning
        assert_close(tjs.fisher_scope(processed, PROMPT, rank=None).scores, tjs.fisher_scope(model, PROMPT, rank=None).scores, rtol=1e-3)
        kw = dict(target="dog", contrast="cat")
        assert_close(tjs.semantic_scope(processed, PROMPT, **kw).scores, tjs.semantic_scope(model, PROMPT, **kw).scores, rtol=1e-3)
        raw = tjs.semantic_scope(model, PROMPT, target="dog")  # raw weights: no warning

    with pytest.raises(tjs.ProcessedWeightsError, match="fold"):
        tjs.temperature_scope(processed, PROMPT)
    with pytest.warns(tjs.ProcessedWeightsWarning, match="center"):
        centered = tjs.semantic_scope(processed, PROMPT, target="dog")
    assert not torch.allclose(centered.scores, raw.scores, rtol=1e-2)
    with pytest.warns(tjs.ProcessedWeightsWarning, match="eigen"):
        tjs.fisher_scope(processed, PROMPT, rank=1)
