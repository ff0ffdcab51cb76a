"""TargetWarning: a target or contrast given as text that is probably the wrong token.

Thresholds (driver.UNLIKELY_RATIO = 10): warn when p(target) < p(top) / 10 and a near spelling
(leading space, case) is one token with p > 10 × p(target). On the default model after
"The capital of France is": p(" Paris") ≈ 0.75 (top), p("Paris") ≈ 0.0016.
"""

import warnings

import pytest

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.scopes.driver import UNLIKELY_RATIO

PROMPT = "The capital of France is"


def _target_warnings(call):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = call()
    return result, [w for w in record if issubclass(w.category, tjs.TargetWarning)]


def test_misspelled_target_warns_once_naming_the_likelier_token(default_model):
    result, found = _target_warnings(lambda: tjs.semantic_scope(default_model, PROMPT, target="Paris"))
    assert result.predicted_str == " Paris" and result.target_prob * UNLIKELY_RATIO < result.predicted_prob  # margin: the premise
    assert len(found) == 1 and issubclass(tjs.TargetWarning, UserWarning)
    message = str(found[0].message)
    assert "did you mean target=' Paris'" in message and f"p={result.predicted_prob:.2g}" in message
    assert f"target={result.target}" in message and "filterwarnings" in message  # how to silence it
    assert found[0].filename == __file__  # points at the user's line


def test_no_warning_for_the_right_token_or_an_id(default_model):
    paris = default_model.to_tokens("Paris", prepend_bos=False)[0, 0].item()
    for target in (" Paris", paris, None):
        _, found = _target_warnings(lambda: tjs.semantic_scope(default_model, PROMPT, target=target))
        assert found == [], target
    _, found = _target_warnings(lambda: tjs.semantic_scope(default_model, PROMPT, target=" Paris", contrast=" Rome"))
    assert found == []


def test_one_warning_for_a_batch_or_many_positions(default_model):
    prompts = [PROMPT, "Paris is a city. " + PROMPT, "I think that " + PROMPT]
    _, found = _target_warnings(lambda: tjs.semantic_scope(default_model, prompts, target="Paris"))
    assert len(found) == 1 and "prompt 0" in str(found[0].message) and "2 more" in str(found[0].message)
    _, found = _target_warnings(lambda: tjs.semantic_scope(default_model, PROMPT, positions=[4, 5], target="Paris"))
    assert len(found) == 1


def test_misspelled_contrast_warns(default_model):
    _, found = _target_warnings(lambda: tjs.semantic_scope(default_model, PROMPT, target=" Paris", contrast="Rome"))
    assert len(found) == 1 and "did you mean contrast=' Rome'" in str(found[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", tjs.TargetWarning)  # the documented way to silence it (takes precedence)
        tjs.semantic_scope(default_model, PROMPT, target=" Paris", contrast="Rome")


def test_unknown_words_are_no_alternative():
    """A word-level tokenizer maps unknown spellings ("paris") to <unk>: never suggested."""
    from tiny_models import tiny_model
    from tl_jacobian_scopes.models.access import ModelAccess
    from tl_jacobian_scopes.models.inputs import near_variants

    access = ModelAccess(tiny_model("gpt2", "bridge")[0])
    assert near_variants(access, "paris") == {access.to_tokens("Paris", prepend_bos=False)[0, 0].item(): "Paris"}
    assert near_variants(access, "Paris") == {}  # "paris", "PARIS" are <unk>; " Paris" is "Paris" itself
