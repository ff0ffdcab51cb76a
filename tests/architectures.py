"""The architecture matrix: one tiny random model per decoder family TransformerLens supports,
and an independent float64 reference on the plain Hugging Face model.

Every family is built from a ``transformers`` config (no download), with the word-level tiny
tokenizer of ``tiny_models.py``, two layers, hidden size 32, random norm gains (so ‖y‖ is not
constant) and the family's logit transform at a realistic constant. The reference never
touches tl_jacobian_scopes or TransformerLens: it perturbs the embedding leaf with a forward
hook on the HF module whose output it is (after the architecture's fixed embedding scale or
embedding LayerNorm, before additive positional embeddings: docs/method.md §1) and
differentiates the HF model's own final logits, transform included.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from tiny_models import tiny_tokenizer

#: Families that are not text decoders (encoders, encoder-decoders, audio, vision, multimodal
#: wrappers, diffusion LMs) or that ``transformers`` cannot build from its own classes
#: (remote code): listed in docs/architectures.md, not run.
SKIPPED_REASONS = {
    "not a text decoder": (
        "ASTForAudioClassification", "BartForConditionalGeneration", "BertForMaskedLM", "BertLMHeadModel",
        "RobertaForMaskedLM", "BlenderbotForConditionalGeneration", "HubertForCTC", "HubertModel",
        "Wav2Vec2ForCTC", "Wav2Vec2ForPreTraining", "Wav2Vec2Model", "LEDForConditionalGeneration",
        "LongT5ForConditionalGeneration", "M2M100ForConditionalGeneration", "MarianMTModel",
        "MBartForConditionalGeneration", "PegasusForConditionalGeneration", "SwitchTransformersForConditionalGeneration",
        "T5ForConditionalGeneration", "MT5ForConditionalGeneration", "T5WithLMHeadModel",
        "T5GemmaForConditionalGeneration", "T5Gemma2ForConditionalGeneration", "ViTModel",
        "ViTForImageClassification", "DeiTModel", "DeiTForImageClassification", "BloomModel",
        "BD3LM", "DreamModel", "GiddForDiffusionLM", "LLaDAModelLM", "LLaDA2MoeModelLM",
    ),
    "multimodal wrapper (its text decoder is tested where TransformerLens has one)": (
        "Emu3ForConditionalGeneration", "AudioFlamingo3ForConditionalGeneration",
        "MusicFlamingoForConditionalGeneration", "Florence2ForConditionalGeneration",
        "Gemma3ForConditionalGeneration", "Gemma3nForConditionalGeneration", "Gemma4ForConditionalGeneration",
        "Gemma4UnifiedForConditionalGeneration", "Glm4vForConditionalGeneration", "GlmAsrForConditionalGeneration",
        "Idefics3ForConditionalGeneration", "Llama4ForConditionalGeneration", "LlavaForConditionalGeneration",
        "LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration",
        "Mistral3ForConditionalGeneration", "MuseGlimmerForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration", "Qwen2AudioForConditionalGeneration",
        "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
        "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration",
    ),
    "no class in transformers (remote code or TransformerLens-native)": (
        "BaiChuanForCausalLM", "BaichuanForCausalLM", "HyenaDNAForCausalLM", "JetMoEForCausalLM",
        "ExaoneForCausalLM", "Gemma1ForCausalLM", "GPT2LMHeadCustomModel", "InternLM2ForCausalLM",
        "MPTForCausalLM", "NeoForCausalLM", "NeoXForCausalLM", "NeelSoluOldForCausalLM", "OpenELMForCausalLM",
        "OuroForCausalLM", "PhiMoEForCausalLM", "QwenForCausalLM", "RavenForCausalLM", "RWKV7ForCausalLM",
        "NanoGPTForCausalLM", "TransformerLensNative", "TransformerLensPretrain", "MinGPTForCausalLM",
    ),
}

# Sizes every family gets where its config has the attribute (hidden 32, 2 layers, 4 heads).
_GENERIC: dict[str, Any] = dict(
    hidden_size=32, n_embd=32, d_model=32, num_hidden_layers=2, n_layer=2, num_layers=2,
    num_attention_heads=4, n_head=4, num_heads=4, num_key_value_heads=2, multi_query_group_num=2,
    intermediate_size=48, n_inner=48, ffn_dim=48, ffn_hidden_size=48, head_dim=8,
    max_position_embeddings=64, n_positions=64, n_ctx=64, max_seq_len=64, seq_length=64,
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
    shared_expert_intermediate_size=16, shared_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1,
    moe_k=2, moe_num_experts=4, kv_lora_rank=16, q_lora_rank=16, o_lora_rank=16, qk_rope_head_dim=4,
    qk_nope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1, state_size=8, mamba_d_state=8, ssm_state_size=8,
    mamba_n_heads=4, mamba_d_head=16, mamba_head_dim=16, mamba_n_groups=1, n_groups=1, mamba_chunk_size=16,
    chunk_size=16, time_step_rank=4, expand=2, mamba_expand=2, conv_kernel=4, mamba_d_conv=4, rotary_dim=4,
    sliding_window=16, attention_window_size=16, word_embed_proj_dim=32, linear_key_head_dim=8,
    linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4, vocab_size_per_layer_input=64,
    hidden_size_per_layer_input=8, index_n_heads=2, index_head_dim=8, index_topk=4, o_groups=2,
    hidden_dropout=0.0, attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    dropout=0.0, hidden_dropout_prob=0.0, summary_first_dropout=0.0,
)

# MLA attention (DeepSeek-style): q/k heads of nope + rope dims, head_dim = the rope part.
_MLA = dict(head_dim=4, qk_head_dim=12, num_key_value_heads=4)


@dataclass(frozen=True)
class Family:
    """One architecture of the matrix: the HF class, its config type and the tiny model's settings."""

    arch: str
    model_type: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Dotted path (from the ``*ForCausalLM``) of the module whose output is the embedding leaf;
    #: ``None``: ``get_input_embeddings()``.
    leaf_module: Optional[str] = None
    #: The constant the model multiplies that module's output by before the first block.
    post_scale: Callable[[Any], float] = lambda config: 1.0
    #: The final norm has no parameters: ‖y‖ is constant by construction (Temperature degenerate).
    scale_free_final_norm: bool = False
    #: The token embedding also reaches later layers by another path (Gemma-4's per-layer
    #: inputs, Zamba2's shared blocks), so the layer-0 residual map is not the token scope.
    embedding_bypasses_layer0: bool = False
    #: A known deviation from the leaf convention: a step TransformerLens cannot see through sits
    #: between ``hook_embed`` and block 0 (NanoChat's parameter-free norm, HRM's ×embedding_scale
    #: into a recurrent H/L stack), so the library takes ``hook_embed`` itself as the leaf and says
    #: so (``params["embedding_leaf"] == "hook_embed_unverified"``). The reference then
    #: differentiates at the HF embedding module's output, the same vector.
    leaf_is_raw_embedding: bool = False

    @property
    def name(self) -> str:
        return self.arch.removesuffix("ForCausalLM").removesuffix("LMHeadModel")


def _f(arch: str, model_type: str, **kw: Any) -> Family:
    return Family(arch, model_type, **kw)


FAMILIES: list[Family] = [
    _f("AfmoeForCausalLM", "afmoe", overrides=dict(mup_enabled=True, num_dense_layers=1, global_attn_every_n_layers=2),
       post_scale=lambda c: c.hidden_size ** 0.5),
    _f("ApertusForCausalLM", "apertus"),
    _f("ArceeForCausalLM", "arcee"),
    _f("BambaForCausalLM", "bamba", overrides=dict(attn_layer_indices=[1])),
    _f("BitNetForCausalLM", "bitnet"),
    _f("BloomForCausalLM", "bloom", leaf_module="transformer.word_embeddings_layernorm"),
    _f("CodeGenForCausalLM", "codegen"),
    _f("CohereForCausalLM", "cohere", overrides=dict(logit_scale=0.0625)),
    _f("Cohere2ForCausalLM", "cohere2", overrides=dict(logit_scale=0.0625)),
    _f("DeepseekV2ForCausalLM", "deepseek_v2", overrides=_MLA),
    _f("DeepseekV3ForCausalLM", "deepseek_v3", overrides=_MLA),
    _f("DeepseekV4ForCausalLM", "deepseek_v4", overrides=dict(head_dim=8, num_key_value_heads=1)),
    _f("Ernie4_5ForCausalLM", "ernie4_5"),
    _f("Ernie4_5_MoeForCausalLM", "ernie4_5_moe"),
    _f("Exaone4ForCausalLM", "exaone4"),
    _f("FalconForCausalLM", "falcon"),
    _f("FalconH1ForCausalLM", "falcon_h1", overrides=dict(
        mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, lm_head_multiplier=0.25, embedding_multiplier=3.0),
       post_scale=lambda c: c.embedding_multiplier),
    _f("FalconMambaForCausalLM", "falcon_mamba"),
    _f("FlexOlmoForCausalLM", "flex_olmo"),
    _f("GemmaForCausalLM", "gemma"),
    _f("Gemma2ForCausalLM", "gemma2", overrides=dict(final_logit_softcapping=30.0)),
    _f("Gemma3ForCausalLM", "gemma3_text"),
    _f("Gemma4ForCausalLM", "gemma4_text", overrides=dict(final_logit_softcapping=30.0, global_head_dim=8),
       embedding_bypasses_layer0=True),
    _f("GlmForCausalLM", "glm"),
    _f("Glm4ForCausalLM", "glm4"),
    _f("Glm4MoeForCausalLM", "glm4_moe"),
    _f("Glm4MoeLiteForCausalLM", "glm4_moe_lite", overrides=_MLA),
    _f("GlmMoeDsaForCausalLM", "glm_moe_dsa", overrides=_MLA),
    # n_inner=None (d_mlp = 4 d): TransformerLens 3.9's HookedTransformer ignores n_inner.
    _f("GPT2LMHeadModel", "gpt2", overrides=dict(n_inner=None)),
    _f("GPTBigCodeForCausalLM", "gpt_bigcode"),
    _f("GPTJForCausalLM", "gptj", overrides=dict(n_inner=None)),
    _f("GPTNeoForCausalLM", "gpt_neo", overrides=dict(attention_types=[[["global", "local"], 1]], window_size=16,
                                                     intermediate_size=None)),
    _f("GPTNeoXForCausalLM", "gpt_neox"),
    _f("GptOssForCausalLM", "gpt_oss"),
    _f("GraniteForCausalLM", "granite", overrides=dict(logits_scaling=8.0, embedding_multiplier=12.0),
       post_scale=lambda c: c.embedding_multiplier),
    _f("GraniteMoeForCausalLM", "granitemoe", overrides=dict(logits_scaling=8.0, embedding_multiplier=12.0),
       post_scale=lambda c: c.embedding_multiplier),
    _f("GraniteMoeHybridForCausalLM", "granitemoehybrid", overrides=dict(
        logits_scaling=8.0, embedding_multiplier=12.0, layer_types=["mamba", "attention"]),
       post_scale=lambda c: c.embedding_multiplier),
    _f("HrmTextForCausalLM", "hrm_text", leaf_is_raw_embedding=True, scale_free_final_norm=True),
    _f("HunYuanDenseV1ForCausalLM", "hunyuan_v1_dense"),
    _f("Jais2ForCausalLM", "jais2"),
    _f("JambaForCausalLM", "jamba", overrides=dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                                  expert_layer_offset=1, mamba_dt_rank=4, mamba_d_state=8)),
    _f("JetMoeForCausalLM", "jetmoe"),
    _f("LagunaForCausalLM", "laguna"),
    _f("Lfm2ForCausalLM", "lfm2", overrides=dict(layer_types=["conv", "full_attention"])),
    _f("Lfm2MoeForCausalLM", "lfm2_moe", overrides=dict(layer_types=["conv", "full_attention"], num_dense_layers=1)),
    _f("LlamaForCausalLM", "llama"),
    _f("Llama4ForCausalLM", "llama4_text"),
    _f("MambaForCausalLM", "mamba"),
    _f("Mamba2ForCausalLM", "mamba2", overrides=dict(head_dim=16)),
    _f("MiniMaxM2ForCausalLM", "minimax_m2"),
    _f("Ministral3ForCausalLM", "ministral3"),
    _f("MistralForCausalLM", "mistral"),
    _f("MixtralForCausalLM", "mixtral"),
    _f("ModernBertDecoderForCausalLM", "modernbert-decoder", leaf_module="model.embeddings.norm"),
    _f("MptForCausalLM", "mpt"),
    _f("NanoChatForCausalLM", "nanochat", overrides=dict(final_logit_softcapping=15.0), scale_free_final_norm=True,
       leaf_is_raw_embedding=True),
    _f("NemotronForCausalLM", "nemotron"),
    _f("NemotronHForCausalLM", "nemotron_h", overrides=dict(layers_block_type=["mamba", "attention"])),
    _f("OlmoForCausalLM", "olmo", scale_free_final_norm=True),
    _f("Olmo2ForCausalLM", "olmo2"),
    _f("Olmo3ForCausalLM", "olmo3"),
    _f("OlmoeForCausalLM", "olmoe"),
    _f("OlmoHybridForCausalLM", "olmo_hybrid"),
    _f("OpenAIGPTLMHeadModel", "openai-gpt"),
    _f("OPTForCausalLM", "opt"),
    _f("PhiForCausalLM", "phi"),
    _f("Phi3ForCausalLM", "phi3"),
    _f("Qwen2ForCausalLM", "qwen2"),
    _f("Qwen2MoeForCausalLM", "qwen2_moe"),
    _f("Qwen3ForCausalLM", "qwen3"),
    _f("Qwen3MoeForCausalLM", "qwen3_moe"),
    _f("Qwen3NextForCausalLM", "qwen3_next", overrides=dict(layer_types=["linear_attention", "full_attention"])),
    _f("Qwen3_5ForCausalLM", "qwen3_5_text", overrides=dict(layer_types=["linear_attention", "full_attention"])),
    _f("Qwen3_5MoeForCausalLM", "qwen3_5_moe_text", overrides=dict(layer_types=["linear_attention", "full_attention"])),
    _f("RecurrentGemmaForCausalLM", "recurrent_gemma", overrides=dict(block_types=["recurrent", "attention"],
                                                                     lru_width=32, final_w_init_variance_scale=1.0),
       post_scale=lambda c: float(torch.tensor(c.hidden_size ** 0.5, dtype=torch.bfloat16))),
    _f("RwkvForCausalLM", "rwkv", overrides=dict(attention_hidden_size=32, context_length=64)),
    _f("SeedOssForCausalLM", "seed_oss"),
    _f("SmolLM3ForCausalLM", "smollm3"),
    _f("StableLmForCausalLM", "stablelm"),
    _f("Starcoder2ForCausalLM", "starcoder2"),
    _f("VaultGemmaForCausalLM", "vaultgemma", overrides=dict(final_logit_softcapping=30.0)),
    _f("XGLMForCausalLM", "xglm"),
    _f("YoutuForCausalLM", "youtu", overrides=_MLA),
    _f("Zamba2ForCausalLM", "zamba2", overrides=dict(layers_block_type=["mamba", "hybrid"], n_mamba_heads=4,
                                                   head_dim=16, hybrid_layer_ids=[1], num_mem_blocks=1),
       embedding_bypasses_layer0=True),
]
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}


def tiny_config(family: Family) -> Any:
    """The family's tiny config (``transformers`` only, offline)."""
    from transformers import AutoConfig

    vocab = len(tiny_tokenizer())
    base = AutoConfig.for_model(family.model_type)
    known = set(base.to_dict()) | set(getattr(base, "attribute_map", {}))
    kwargs = {k: v for k, v in _GENERIC.items() if k in known}
    kwargs.update(family.overrides)
    kwargs.update(vocab_size=vocab, bos_token_id=1, eos_token_id=1, pad_token_id=2)
    if "tie_word_embeddings" in known:
        kwargs["tie_word_embeddings"] = False  # an untied W_U: the unembedding is tested on its own
    # Eager MoE experts: the grouped-matmul kernels refuse float64 (the reference's dtype).
    config = AutoConfig.for_model(family.model_type, experts_implementation="eager", **kwargs)
    n = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else 2
    for attr in ("layer_types",):
        value = getattr(config, attr, None)
        if isinstance(value, (list, tuple)) and len(value) != n:
            setattr(config, attr, list(value[:n]))
    config.architectures = [family.arch]
    return config


def _norm_like(name: str) -> bool:
    lower = name.lower()
    return any(s in lower for s in ("norm", "ln_", ".ln", "ln1", "ln2", "layer_norm", "layernorm"))


@functools.lru_cache(maxsize=None)
def _cached_hf(name: str, seed: int) -> Any:
    from transformers import AutoModelForCausalLM

    family = FAMILY_BY_NAME[name]
    config = tiny_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if _norm_like(pname) and param.ndim == 1:
                if pname.endswith("weight") or pname.endswith("scale"):
                    param.copy_(1.0 + 0.3 * torch.randn_like(param))
                else:
                    param.copy_(0.1 * torch.randn_like(param))
            elif param.ndim >= 2:
                param.mul_(3.0)  # larger weights: a less linear model
    model.eval()
    # Logits of a realistic size (max |z| about 12, so p is neither flat nor one-hot): W_U is
    # rescaled (untied models only; a tied W_U is also the embedding). A linear logit transform
    # (Cohere, Granite, FalconH1) then acts on logits 4-16x larger, as in the real models.
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not embed.weight:
        ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
        for _ in range(3):
            with torch.no_grad():
                z = model(input_ids=ids, use_cache=False).logits
                head.weight.mul_(LOGIT_SIZE / float(z.abs().max()))
    return model


#: Largest |logit| of the tiny models (untied ones).
LOGIT_SIZE = 12.0


def tiny_family_model(name: str, seed: int = 0) -> Any:
    """A fresh copy of the family's tiny random HF model (the build is cached per session)."""
    return copy.deepcopy(_cached_hf(name, seed))


def _resolve(root: Any, path: str) -> Any:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


@dataclass
class Reference:
    """Float64 brute force on the HF model at one position.

    ``G``: ``dz/dx`` (``[V, T, d]``, z the model's own logits, x the embedding leaf);
    ``J``: ``dy/dx`` (``[d, T, d]``, y the unembedding's input); ``A``: ``dz/dy`` (``[V, d]``);
    ``y``; ``z``; ``p = softmax(z)``.
    """

    G: torch.Tensor
    J: torch.Tensor
    A: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor

    @property
    def p(self) -> torch.Tensor:
        return torch.softmax(self.z, -1)

    def semantic(self, target: int, contrast: Optional[int] = None) -> torch.Tensor:
        g = self.G[target] - (self.G[contrast] if contrast is not None else 0)
        return g.norm(dim=-1)

    def temperature(self) -> torch.Tensor:
        return torch.einsum("o,oti->ti", self.y / self.y.norm(), self.J).norm(dim=-1)

    def fisher_exact(self) -> torch.Tensor:
        """``tr(G_tᵀ (diag p − p pᵀ) G_t)``: from the logits alone, no y in between."""
        p = self.p
        Gp = torch.einsum("v,vti->ti", p, self.G)
        return torch.einsum("v,vti->t", p, self.G.pow(2)) - Gp.pow(2).sum(-1)

    def fisher_rank(self, k: int) -> torch.Tensor:
        p = self.p
        F = self.A.T @ (torch.diag(p) - torch.outer(p, p)) @ self.A
        evals, evecs = torch.linalg.eigh(F)
        proj = torch.einsum("ok,oti->kti", evecs[:, -k:], self.J)
        return (evals[-k:, None] * proj.pow(2).sum(-1)).sum(0)


def _jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``d fn / d x`` with rows batched through vmap, or one backward per row where vmap fails."""
    try:
        return torch.autograd.functional.jacobian(fn, x, vectorize=True)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        leaf = x.detach().clone().requires_grad_(True)
        out = fn(leaf)
        rows = [torch.autograd.grad(out[i], leaf, retain_graph=True)[0] for i in range(out.shape[0])]
        return torch.stack(rows)


def reference(family: Family, hf_model: Any, tokens: torch.Tensor, position: int) -> Reference:
    """The float64 reference of ``family`` for one prompt at one explained position."""
    ref = copy.deepcopy(hf_model).double().eval()
    leaf_module = _resolve(ref, family.leaf_module) if family.leaf_module else ref.get_input_embeddings()
    head = ref.get_output_embeddings()
    scale = 1.0 if family.leaf_is_raw_embedding else float(family.post_scale(ref.config))
    ids = tokens.reshape(1, -1)
    state: dict[str, Any] = {}

    def on_leaf(module: Any, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        state["x"] = output.detach() * scale
        if "x_new" in state:
            return state["x_new"][None] / scale
        return None

    def on_head(module: Any, args: Any) -> Any:
        hidden = args[0]
        state["y"] = hidden[0, position].detach()
        if "y_new" in state:
            hidden = hidden.clone()
            hidden[0, position] = state["y_new"]
            return (hidden,) + tuple(args[1:])
        return None

    handles = [leaf_module.register_forward_hook(on_leaf), head.register_forward_pre_hook(on_head)]
    default_dtype = torch.get_default_dtype()
    # float64 defaults: XGLM builds its mask floor with torch.full((), finfo(float64).min), which
    # overflows the default float32.
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            z = ref(input_ids=ids, use_cache=False).logits[0, position].detach().double()
        x0, y0 = state["x"][0], state["y"]

        def logits_of_x(x: torch.Tensor) -> torch.Tensor:
            state["x_new"] = x
            try:
                return ref(input_ids=ids, use_cache=False).logits[0, position]
            finally:
                state.pop("x_new")

        def y_of_x(x: torch.Tensor) -> torch.Tensor:
            state["x_new"] = x
            captured: dict[str, torch.Tensor] = {}

            def keep(module: Any, args: Any) -> None:
                captured["y"] = args[0][0, position]

            h = head.register_forward_pre_hook(keep)
            try:
                ref(input_ids=ids, use_cache=False)
            finally:
                h.remove()
                state.pop("x_new")
            return captured["y"]

        def logits_of_y(y: torch.Tensor) -> torch.Tensor:
            state["y_new"] = y
            try:
                return ref(input_ids=ids, use_cache=False).logits[0, position]
            finally:
                state.pop("y_new")

        G = _jacobian(logits_of_x, x0)
        J = _jacobian(y_of_x, x0)
        A = _jacobian(logits_of_y, y0)
    finally:
        torch.set_default_dtype(default_dtype)
        for h in handles:
            h.remove()
    # Some heads return float32 logits even from a float64 model (Mamba's ``.float()``).
    return Reference(G=G.double(), J=J.double(), A=A.double(), y=y0.double(), z=z)


def check_reference(ref: Reference) -> None:
    """The chain rule ``G = A J`` ties the three Jacobians together (a wrong hook breaks it)."""
    chained = torch.einsum("vo,oti->vti", ref.A, ref.J)
    scale = float(ref.G.abs().max()) + 1e-300
    # 1e-5, not 1e-12: HF's RMSNorm and rotary tables compute in float32 even in a float64 model.
    assert float((chained - ref.G).abs().max()) <= 1e-5 * scale, "reference: G != A J"




def _decoder_layers(model: Any) -> Optional[Any]:
    """The HF model's list of decoder blocks (the one ModuleList of ``num_hidden_layers`` blocks)."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = [m for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) == n and name.split(".")[-1] in ("layers", "h", "blocks")]
    return found[0] if len(found) == 1 else None


def layer_jacobian(family: Family, hf_model: Any, tokens: torch.Tensor, position: int, layer: int) -> Optional[torch.Tensor]:
    """``dz/d resid_pre[layer]`` (``[V, T, d]``, float64): the residual stream entering HF block
    ``layer``, replaced through a forward pre-hook. ``None`` where the blocks are not one list."""
    ref = copy.deepcopy(hf_model).double().eval()
    blocks = _decoder_layers(ref)
    if blocks is None:
        return None
    ids = tokens.reshape(1, -1)
    state: dict[str, Any] = {}

    def pre(module: Any, args: Any, kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        state["a"] = hidden[0].detach()
        if "new" in state:
            if args:
                return (state["new"][None],) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": state["new"][None]}
        return None

    handle = blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            ref(input_ids=ids, use_cache=False)
        a0 = state["a"]

        def logits_of_a(a: torch.Tensor) -> torch.Tensor:
            state["new"] = a
            try:
                return ref(input_ids=ids, use_cache=False).logits[0, position]
            finally:
                state.pop("new")

        return _jacobian(logits_of_a, a0).double()
    finally:
        torch.set_default_dtype(default_dtype)
        handle.remove()
