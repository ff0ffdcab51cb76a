"""Tiny random models built from a config (no download), and an independent reference.

The reference never touches tl_jacobian_scopes or TransformerLens: it runs the Hugging
Face model in float64 with ``inputs_embeds`` and takes a brute-force Jacobian with
``torch.autograd.functional.jacobian``.
"""

from __future__ import annotations

import copy
import tempfile

import torch

from tl_jacobian_scopes.models.loading import bridge_from_hf, has_hooked_transformer, hooked_from_hf

WORDS = (
    "the a cat dog sat on mat and ran to house big small red blue green is was of in it "
    "he she they we you I love hate food city Paris France Rome Italy capital river tree "
    "sun moon star sky day night one two three four five six seven eight nine ten"
).split()

#: Short prompts in the tiny tokenizer's words (sweeps and prompt files in the tests).
TINY_TEXTS = ["the cat sat on the mat", "the dog ran to the big red house", "we love the food of the city",
              "he ran", "the sun and the moon and the star", "she was in the house", "one two three four five six"]

BACKENDS = ["bridge"] + (["hooked"] if has_hooked_transformer() else [])
KINDS = ["gpt2", "llama"]


_TOKENIZER_DIR = None


def tiny_tokenizer():
    """A word-level tokenizer, saved to disk (TransformerLens reloads tokenizers by path)."""
    global _TOKENIZER_DIR
    from transformers import AutoTokenizer

    if _TOKENIZER_DIR is None:
        _TOKENIZER_DIR = tempfile.mkdtemp(prefix="tiny-tokenizer-")
        _build_tokenizer().save_pretrained(_TOKENIZER_DIR)
    return AutoTokenizer.from_pretrained(_TOKENIZER_DIR)


def _build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<pad>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>", pad_token="<pad>", eos_token="<bos>"
    )


def tiny_hf_model(kind: str, seed: int = 0):
    """A random GPT-2-like (learned positions, LayerNorm) or Llama-like (RMSNorm, rotary, GQA) model."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    n_vocab = len(tiny_tokenizer())
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=n_vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1,
        )
        config.architectures = ["GPT2LMHeadModel"]
        model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=n_vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
            rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=1, pad_token_id=2,
        )
        config.architectures = ["LlamaForCausalLM"]
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(kind)
    randomize_norms(model, ("ln", "norm"), "weight", 5.0)
    model.eval()
    return model


def randomize_norms(model, norm_names=("ln", "norm"), gain_suffix: str = "weight", weight_scale: float = 5.0) -> None:
    """Random norm gains (≈1) and biases, and matrices scaled by ``weight_scale``, in place.

    With gains of exactly 1, ‖y‖ would be constant; larger weights make a less trivial, less linear model.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(key in name for key in norm_names):
                param.copy_(1.0 + 0.3 * torch.randn_like(param) if name.endswith(gain_suffix)
                            else 0.1 * torch.randn_like(param))
            elif param.ndim >= 2:
                param.mul_(weight_scale)


def tiny_model(kind: str, backend: str, seed: int = 0):
    """``(tl_model, hf_model)``: a TransformerLens model and the HF model it wraps or copies."""
    hf = tiny_hf_model(kind, seed)
    tok = tiny_tokenizer()
    if backend == "bridge":
        model = bridge_from_hf(copy.deepcopy(hf), tok, f"tiny-{kind}", device="cpu")
    else:
        model = hooked_from_hf(hf, tok, device="cpu")
    return model, hf


def reference_jacobian(hf_model, tokens: torch.Tensor, position: int, row_chunk=None):
    """Brute-force ``dy/dx`` in float64: returns ``(J [d_out, pos, d_in], y, W_U [d, V], b_U)``.

    With ``row_chunk=None`` it calls ``torch.autograd.functional.jacobian``; for a large
    model it builds the same matrix ``row_chunk`` output rows at a time with plain autograd
    (bounded memory).
    """
    ref = copy.deepcopy(hf_model).double().eval()
    embeds = ref.get_input_embeddings()(tokens.reshape(1, -1)).detach()

    def final_hidden(x):
        return ref.base_model(inputs_embeds=x).last_hidden_state[0, position]

    if row_chunk is None:
        J = torch.autograd.functional.jacobian(final_hidden, embeds, vectorize=True)[:, 0]
    else:
        x = embeds.clone().requires_grad_(True)
        out = final_hidden(x)
        eye = torch.eye(out.shape[0], dtype=out.dtype)
        rows = []
        for start in range(0, out.shape[0], row_chunk):
            (g,) = torch.autograd.grad(out, x, grad_outputs=eye[start : start + row_chunk], is_grads_batched=True, retain_graph=True)
            rows.append(g[:, 0])
        J = torch.cat(rows)
    with torch.no_grad():
        y = final_hidden(embeds)
    head = ref.get_output_embeddings()
    W_U = head.weight.detach().T
    b_U = head.bias.detach() if getattr(head, "bias", None) is not None else torch.zeros(W_U.shape[1], dtype=W_U.dtype)
    return J, y, W_U, b_U


def reference_scores(J, y, W_U, b_U, scope: str, target=None, contrast=None, rank=None):
    """Scores from the explicit Jacobian and an explicit float64 F (no chunking)."""
    if scope == "semantic":
        v = W_U[:, target] - (W_U[:, contrast] if contrast is not None else 0)
        return torch.einsum("o,oti->ti", v, J).norm(dim=-1)
    if scope == "temperature":
        v = y / y.norm()
        return torch.einsum("o,oti->ti", v, J).norm(dim=-1)
    p = torch.softmax(y @ W_U + b_U, dim=-1)
    mean = W_U @ p
    F = (W_U * p) @ W_U.T - torch.outer(mean, mean)
    if rank is None:
        return torch.einsum("oti,op,pti->t", J, F, J)
    evals, evecs = torch.linalg.eigh(F)
    top = evecs[:, -rank:]
    proj = torch.einsum("ok,oti->kti", top, J)
    return (evals[-rank:, None] * proj.pow(2).sum(-1)).sum(0)


def _site_modules(hf_model):
    """(module, 'pre'|'out') per internal site of a plain HF GPT-2 or Llama model."""
    if hasattr(hf_model, "transformer"):  # GPT-2
        blocks, final = hf_model.transformer.h, hf_model.transformer.ln_f
        attn, mlp, o_proj = "attn", "mlp", lambda b: b.attn.c_proj
    else:  # Llama
        blocks, final = hf_model.model.layers, hf_model.model.norm
        attn, mlp, o_proj = "self_attn", "mlp", lambda b: b.self_attn.o_proj
    n = len(blocks)
    sites = {
        "layer": [(b, "pre") for b in blocks] + [(final, "pre")],
        "attn": [(getattr(b, attn), "out") for b in blocks],
        "mlp": [(getattr(b, mlp), "out") for b in blocks],
        "head": [(o_proj(b), "pre") for b in blocks],
    }
    assert all(len(v) in (n, n + 1) for v in sites.values())
    return sites


def reference_internal_jacobians(hf_model, tokens: torch.Tensor, position: int, n_heads: int):
    """Brute-force ``dy/da`` (float64) for every internal site, by replacing ``a`` with
    PyTorch module hooks on the plain HF model.

    Returns ``{site: [J per layer]}`` with ``J`` of shape ``[d_out, pos, d_in]`` (for heads
    ``[d_out, pos, n_heads, d_head]``), and ``(y, W_U, b_U)``.
    """
    ref = copy.deepcopy(hf_model).double().eval()
    embeds = ref.get_input_embeddings()(tokens.reshape(1, -1)).detach()
    out = {}
    for site, modules in _site_modules(ref).items():
        out[site] = []
        for module, mode in modules:
            captured, replacement = {}, {}

            def hook(mod, args, kwargs, output=None, mode=mode):
                if mode == "pre":
                    x = args[0] if args else kwargs["hidden_states"]
                    captured["a"] = x.detach()
                    if "a" in replacement:
                        if args:
                            return (replacement["a"],) + tuple(args[1:]), kwargs
                        return args, {**kwargs, "hidden_states": replacement["a"]}
                    return None
                x = output[0] if isinstance(output, tuple) else output
                captured["a"] = x.detach()
                if "a" in replacement:
                    return (replacement["a"],) + tuple(output[1:]) if isinstance(output, tuple) else replacement["a"]
                return None

            if mode == "pre":
                handle = module.register_forward_pre_hook(hook, with_kwargs=True)
            else:
                handle = module.register_forward_hook(lambda m, a, k, o: hook(m, a, k, o), with_kwargs=True)
            try:
                with torch.no_grad():
                    ref.base_model(inputs_embeds=embeds)

                def final_hidden(a):
                    replacement["a"] = a
                    return ref.base_model(inputs_embeds=embeds).last_hidden_state[0, position]

                J = torch.autograd.functional.jacobian(final_hidden, captured["a"], vectorize=True)[:, 0]
            finally:
                handle.remove()
            if site == "head":
                J = J.reshape(*J.shape[:2], n_heads, -1)
            out[site].append(J)
    _, y, W_U, b_U = reference_jacobian(hf_model, tokens, position)
    return out, (y, W_U, b_U)


def reference_internal_scores(J, y, W_U, b_U, scope: str, target=None, rank=None):
    """The scope of one internal site from its explicit Jacobian (reduced over the last dim)."""
    flat = J.reshape(J.shape[0], -1, J.shape[-1])  # [d_out, cells, d_in]
    if scope == "semantic":
        return torch.einsum("o,oci->ci", W_U[:, target], flat).norm(dim=-1).reshape(J.shape[1:-1])
    if scope == "temperature":
        return torch.einsum("o,oci->ci", y / y.norm(), flat).norm(dim=-1).reshape(J.shape[1:-1])
    p = torch.softmax(y @ W_U + b_U, dim=-1)
    mean = W_U @ p
    F = (W_U * p) @ W_U.T - torch.outer(mean, mean)
    if rank is None:
        return torch.einsum("oci,op,pci->c", flat, F, flat).reshape(J.shape[1:-1])
    evals, evecs = torch.linalg.eigh(F)
    proj = torch.einsum("ok,oci->kci", evecs[:, -rank:], flat)
    return (evals[-rank:, None] * proj.pow(2).sum(-1)).sum(0).reshape(J.shape[1:-1])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """``actual ≈ expected`` to ``rtol``, with an absolute floor of ``rtol`` times the largest
    ``|expected|`` (tiny scores next to large ones are compared at the large ones' scale)."""
    expected = expected.to(actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def write_prompts(path, rows):
    """A JSONL prompt file: each row a text, or a dict of prompt fields."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r if isinstance(r, dict) else {"text": r}) + "\n" for r in rows))
    return path


def read_records(path):
    """The records of a JSONL results file."""
    import json
    from pathlib import Path

    return [json.loads(line) for line in Path(path).read_text().splitlines()]
