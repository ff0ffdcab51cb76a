"""A TransformerLens model that computes another function than its HF model is refused at load."""

import pytest

import tl_jacobian_scopes as tjs
from tiny_models import tiny_hf_model, tiny_tokenizer
from tl_jacobian_scopes.models.loading import _hf_reference_logits, bridge_from_hf, check_same_function

def test_a_forward_that_disagrees_with_hf_is_an_architecture_error():
    hf = tiny_hf_model("llama")
    probe, expected = _hf_reference_logits(hf)
    model = bridge_from_hf(hf, tiny_tokenizer(), "tiny-llama", device="cpu")  # agrees: no error
    check_same_function(model, "bridge", hf.config, probe, expected)
    wrong = expected.clone()
    wrong[..., 3] += 0.1 * float(expected.abs().max())  # one coordinate of y moved by 10% of the largest
    with pytest.raises(tjs.ArchitectureError, match="LlamaForCausalLM.*differs by 10.0%"):
        check_same_function(model, "bridge", hf.config, probe, wrong)
