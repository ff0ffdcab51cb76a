"""The embedded SmolLM2-135M-Instruct: scopes against an independent Hugging Face computation."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import assert_close, reference_jacobian, reference_scores
from tl_jacobian_scopes.models.loading import has_hooked_transformer, hooked_from_hf, load_default_hf_model

PROMPT = "The capital of France is"


@pytest.fixture
def model(default_model):
    return default_model  # loaded once per session (conftest.py)


@pytest.fixture(scope="module")
def reference():
    """Plain transformers, float64, inputs_embeds + autograd: no TransformerLens involved."""
    hf, tokenizer = load_default_hf_model()
    hf.config._attn_implementation = "eager"
    return hf, tokenizer


def test_default_model_predicts_paris(model):
    logits = model(PROMPT)
    assert model.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    result = tjs.fisher_scope(model, PROMPT)
    assert result.predicted_str == " Paris" and result.target_str == " Paris"
    assert result.str_tokens[0] == "<|im_start|>"  # BOS prepended, and scored


def test_default_model_has_raw_weights(model):
    access = tjs.models.ModelAccess(model)
    assert not access.final_norm_folded()
    assert not access.unembed_centered()


def test_scopes_match_independent_hf_computation(model, reference):
    hf, _ = reference
    tokens = model.to_tokens(PROMPT)[0]
    pos = len(tokens) - 1
    J, y, W_U, b_U = reference_jacobian(hf, tokens, pos, row_chunk=32)
    paris, rome = int(model.to_single_token(" Paris")), int(model.to_single_token(" Rome"))
    cases = [
        (tjs.semantic_scope(model, PROMPT, target=" Paris"), dict(scope="semantic", target=paris)),
        (
            tjs.semantic_scope(model, PROMPT, target=" Paris", contrast=" Rome"),
            dict(scope="semantic", target=paris, contrast=rome),
        ),
        (tjs.temperature_scope(model, PROMPT), dict(scope="temperature")),
        (tjs.fisher_scope(model, PROMPT, rank=1), dict(scope="fisher", rank=1)),
        (tjs.fisher_scope(model, PROMPT, rank=None), dict(scope="fisher", rank=None)),
    ]
    for result, spec in cases:
        assert_close(result.scores, reference_scores(J, y, W_U, b_U, **spec))
    assert cases[2][0].params["y_norm"] == pytest.approx(float(y.norm()), rel=1e-4)


def test_teacher_forced_position_matches_reference(model, reference):
    hf, _ = reference
    tokens = model.to_tokens(PROMPT)[0]
    J, y, W_U, b_U = reference_jacobian(hf, tokens, 3, row_chunk=32)
    result = tjs.fisher_scope(model, PROMPT, position=3, rank=1)
    assert_close(result.scores, reference_scores(J, y, W_U, b_U, scope="fisher", rank=1))
    assert torch.all(result.scores[4:] == 0)


@pytest.mark.skipif(not has_hooked_transformer(), reason="HookedTransformer exists only on TransformerLens 3.x")
def test_hooked_transformer_and_bridge_agree(model):
    """Same weights, two backends (TransformerLens 3.x): same scores."""
    hf, tokenizer = load_default_hf_model()
    bridge = tjs.models.bridge_from_hf(hf, tokenizer, tjs.DEFAULT_MODEL_NAME, device="cpu")
    hooked = model if tjs.models.backend_name(model) == "hooked" else hooked_from_hf(hf, tokenizer, "cpu")
    assert tjs.models.backend_name(hooked) == "hooked" and tjs.models.backend_name(bridge) == "bridge"
    for fn, kwargs in [
        (tjs.semantic_scope, dict(target=" Paris", contrast=" Rome")),
        (tjs.temperature_scope, {}),
        (tjs.fisher_scope, dict(rank=4)),
    ]:
        a, b = fn(hooked, PROMPT, internals=True, **kwargs), fn(bridge, PROMPT, internals=True, **kwargs)
        assert a.str_tokens == b.str_tokens
        assert_close(a.scores, b.scores, rtol=2e-4)
        for site in ("layer", "attn", "mlp", "head"):
            assert_close(a.internal(site), b.internal(site), rtol=2e-3)


def test_temperature_runtime_guard_catches_unflagged_folding(model, monkeypatch):
    """A folded model that does not say so is still refused, from ‖y‖ = √d itself."""
    hf, tokenizer = load_default_hf_model()
    with torch.no_grad():
        hf.model.norm.weight.fill_(1.0)  # a final norm with no scale: ‖y‖ = √d exactly
    scale_free = tjs.models.bridge_from_hf(hf, tokenizer, tjs.DEFAULT_MODEL_NAME, device="cpu")
    with pytest.raises(tjs.ProcessedWeightsError, match="√d_model"):
        tjs.temperature_scope(scale_free, PROMPT)


def test_loading_is_quiet_and_keeps_transformers_progress_setting(capfd):
    from transformers.utils import logging as hf_logging

    for enabled in (True, False):
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
        try:
            tjs.load_default_model(device="cpu")
            assert hf_logging.is_progress_bar_enabled() is enabled  # the user's setting survives
        finally:
            hf_logging.enable_progress_bar()
    assert "Loading weights" not in capfd.readouterr().err


# ---- the first conversion is quiet ---------------------------------------------------------------


def test_first_conversion_prints_one_line_not_progress_bars(tmp_path, monkeypatch, capfd) -> None:
    """The GGUF conversion's own tqdm bar (hundreds of redraws in a log) is silenced; one line says what runs."""
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_CACHE", str(tmp_path))
    model, tokenizer = tjs.models.load_default_hf_model()
    err = capfd.readouterr().err
    assert "converting the embedded model once" in err
    assert "de-quantizing" not in err and "Loading weights" not in err and "%|" not in err
    # transformers' and the GGUF module's progress settings are as they were.
    from transformers.utils import logging as hf_logging
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    import tqdm.auto

    assert hf_logging.is_progress_bar_enabled()
    assert gguf_utils.tqdm is tqdm.auto.tqdm
    assert tokenizer("Paris")["input_ids"] and isinstance(model.lm_head.weight, torch.Tensor)
