"""Every scope against a brute-force Jacobian on tiny random models, on every backend."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import BACKENDS, KINDS, reference_jacobian, reference_scores, tiny_model

PROMPT = "the cat sat on the mat and the dog ran to the"


@pytest.fixture(scope="module", params=[(k, b) for k in KINDS for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    kind, backend = request.param
    model, hf = tiny_model(kind, backend)
    return model, hf


def _close(actual, expected, rtol=1e-4):
    expected = expected.to(actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


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
        _close(result.scores, expected)
        assert result.position == pos


def test_exact_fisher_equals_rank_d(tiny):
    model, _ = tiny
    exact = tjs.fisher_scope(model, PROMPT, rank=None)
    full = tjs.fisher_scope(model, PROMPT, rank=model.cfg.d_model)
    _close(exact.scores, full.scores, rtol=1e-5)
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
