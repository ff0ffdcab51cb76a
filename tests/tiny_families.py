"""Tiny random models of families whose output or embedding differs from GPT-2/Llama, and an
independent float64 reference on the Hugging Face model's real logits.

The reference never touches tl_jacobian_scopes or TransformerLens. It takes, by brute force:

- ``J = ∂y/∂x`` with ``x`` the token's vector as it enters the residual stream (the embedding
  row times the architecture's fixed scale: Gemma ``√d``, inside its embedding module; Granite
  ``embedding_multiplier``, applied to ``inputs_embeds``, so it passes ``x / scale``);
- ``A = ∂z/∂y`` and ``z`` from the HF model's own head, soft-cap or logit scale included, by
  replacing the final norm's output at the explained position with ``y``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

from tiny_models import randomize_norms, tiny_tokenizer

FAMILIES = ["gemma2", "cohere", "granite", "olmo"]


def family_hf_model(family: str, seed: int = 0) -> Any:
    """A 2-layer random model of ``family`` (random norm gains, weights x5 as in tiny_models)."""
    import transformers as T

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tiny_tokenizer()), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, bos_token_id=1,
                  eos_token_id=1, pad_token_id=2)
    if family == "gemma2":  # a small cap, so that soft-capping bends these logits
        config: Any = T.Gemma2Config(**common, head_dim=8, final_logit_softcapping=3.0, attn_logit_softcapping=50.0,
                                     query_pre_attn_scalar=8, sliding_window=16)
        cls: Any = T.Gemma2ForCausalLM
    elif family == "cohere":
        config, cls = T.CohereConfig(**common, logit_scale=0.25), T.CohereForCausalLM
    elif family == "granite":
        config = T.GraniteConfig(**common, embedding_multiplier=12.0, logits_scaling=8.0, residual_multiplier=0.5,
                                 attention_multiplier=0.3)
        cls = T.GraniteForCausalLM
    elif family == "olmo":  # OLMo v1: LayerNorms without parameters
        config, cls = T.OlmoConfig(**common), T.OlmoForCausalLM
    else:
        raise ValueError(family)
    config.architectures = [cls.__name__]
    model = cls(config).eval()
    randomize_norms(model, ("norm",), "weight", 5.0)
    return model


def embed_scale(hf_model: Any) -> float:
    """The fixed factor the HF model applies to ``inputs_embeds`` (1 when none). Gemma's ``√d``
    is inside its embedding module (``Gemma2TextScaledWordEmbedding``), so ``x`` includes it."""
    assert not hf_model.config.model_type.startswith("gemma") or hasattr(hf_model.get_input_embeddings(), "embed_scale")
    return float(getattr(hf_model.config, "embedding_multiplier", 1.0))


def family_reference(hf_model: Any, tokens: torch.Tensor, position: int) -> dict[str, torch.Tensor]:
    """``J [d, T, d]``, ``y``, ``A [V, d]``, ``z``, ``p`` and ``x`` (float64), as in the module docstring."""
    ref = copy.deepcopy(hf_model).double().eval()
    scale = embed_scale(ref)
    x = (ref.get_input_embeddings()(tokens.reshape(1, -1)) * scale).detach()

    def final_hidden(xv: torch.Tensor) -> torch.Tensor:
        return ref.base_model(inputs_embeds=xv / scale).last_hidden_state[0, position]

    J = torch.autograd.functional.jacobian(final_hidden, x, vectorize=True)[:, 0]
    with torch.no_grad():
        y = final_hidden(x)

    def logits_of(yv: torch.Tensor) -> torch.Tensor:
        def replace(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[0, position] = yv
            return out

        handle = ref.base_model.norm.register_forward_hook(replace)
        try:
            return ref(inputs_embeds=x / scale).logits[0, position]
        finally:
            handle.remove()

    A = torch.autograd.functional.jacobian(logits_of, y, vectorize=True)
    with torch.no_grad():
        z = ref(inputs_embeds=x / scale).logits[0, position]
    return {"J": J, "y": y, "A": A, "z": z, "p": torch.softmax(z, dim=-1), "x": x[0]}


def family_scores(ref: dict[str, torch.Tensor], scope: str, target: Optional[int] = None,
                  contrast: Optional[int] = None, rank: Optional[int] = None) -> torch.Tensor:
    """Scores per token from the explicit reference (float64)."""
    J, A, p, y = ref["J"], ref["A"], ref["p"], ref["y"]
    if scope == "semantic":
        v = A[target] - (A[contrast] if contrast is not None else 0)
        return torch.einsum("o,oti->ti", v, J).norm(dim=-1)
    if scope == "temperature":
        return torch.einsum("o,oti->ti", y / y.norm(), J).norm(dim=-1)
    if scope == "gxi":  # ‖∇_x log p_target ⊙ x‖
        v = A.T @ (torch.nn.functional.one_hot(torch.tensor(target), len(p)).double() - p)
        return (torch.einsum("o,oti->ti", v, J) * ref["x"]).norm(dim=-1)
    F = A.T @ (torch.diag(p) - torch.outer(p, p)) @ A
    if rank is None:
        return torch.einsum("oti,op,pti->t", J, F, J)
    evals, evecs = torch.linalg.eigh(F)
    proj = torch.einsum("ok,oti->kti", evecs[:, -rank:], J)
    return (evals[-rank:, None] * proj.pow(2).sum(-1)).sum(0)
