"""The fast forward pass: a TransformerBridge's wrapped Hugging Face modules, run directly.

A TransformerBridge replaces every module of the Hugging Face model it wraps with a bridge
component (hook points, argument filtering, norm statistics for ``hook_scale``), which on a
small model costs more Python calls than the model itself (67,649 against 7,383 per forward
and backward on SmolLM2). When nothing but the scope's own two hooks would fire, the scope's
forward pass needs none of that: this module runs the Hugging Face model with each bridge
component swapped back to the module it wraps (``original_component``), the embedding leaf
added to the embedding module's output (``hook_embed``) and ``y`` read at the base model's
output (the final norm's, ``unembed.hook_in``). The result is bit-for-bit the bridge path's
(``tests/test_direct_forward.py`` proves it on each architecture allowed here).

The path is taken only when it cannot miss anything the bridge would run; otherwise
:func:`direct_plan` answers ``None`` and the caller runs the bridge. Checked on every call:

- the architecture is one whose equality is tested (:data:`DIRECT_ARCHITECTURES`), the
  weights are unprocessed, the model sits on one device, no hook is registered for every module;
- every module of the bridge and of its Hugging Face model is a known type (a bridge
  component of an allowed class, or a ``transformers`` / ``torch.nn`` module): a module a user
  replaced or added is unknown, and so is an instance whose ``forward`` was patched;
- no hook point holds a hook (the user's, or TransformerLens's ``hooks()`` context), and no
  module holds a torch hook that is not the libraries' own.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from ..models.access import ModelAccess, all_modules, has_user_hooks, walked_modules

#: Hugging Face architectures whose direct pass equals the bridge's bit for bit (tested).
#: Every family of the architecture matrix (tests/architectures.py) whose bridge is built from the
#: allowed components below and runs SDPA attention is on it: none of them differed.
DIRECT_ARCHITECTURES = frozenset({
    "Ernie4_5ForCausalLM", "GemmaForCausalLM", "Gemma3ForCausalLM", "HunYuanDenseV1ForCausalLM",
    "LlamaForCausalLM", "Ministral3ForCausalLM", "MistralForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM",
    "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SeedOssForCausalLM",
})

#: ``ENABLED[0] = False`` turns the direct pass off for the process (benchmarks and tests compare both paths).
ENABLED = [True]

#: Bridge component classes (exact) whose forward is the wrapped module's plus hook points.
_COMPONENTS = (
    "embedding.EmbeddingBridge", "block.BlockBridge", "gated_mlp.GatedMLPBridge", "linear.LinearBridge",
    "rms_normalization.RMSNormalizationBridge", "rotary_embedding.RotaryEmbeddingBridge",
    "position_embeddings_attention.PositionEmbeddingsAttentionBridge", "unembedding.UnembeddingBridge",
)
#: Packages whose module classes may sit in the tree (anything else is a user's module).
_KNOWN_PACKAGES = ("transformers.", "torch.nn.")


def _component_classes() -> frozenset[type]:
    found: set[type] = set()
    try:
        from transformer_lens.model_bridge import generalized_components as gc
    except ImportError:
        return frozenset()
    import importlib

    for path in _COMPONENTS:
        module_name, cls_name = path.rsplit(".", 1)
        try:
            found.add(getattr(importlib.import_module(f"{gc.__name__}.{module_name}"), cls_name))
        except (ImportError, AttributeError):
            continue
    return frozenset(found)


_CLASSES: list[frozenset[type]] = []


def component_classes() -> frozenset[type]:
    """The allowed bridge component classes of the installed TransformerLens (read once)."""
    if not _CLASSES:
        _CLASSES.append(_component_classes())
    return _CLASSES[0]


@dataclass(frozen=True)
class DirectPlan:
    """How to run one model directly: what to swap, what to call."""

    #: ``(parent, name, bridge component)``: ``parent._modules[name]`` is swapped to the component's
    #: ``original_component`` for the pass.
    swaps: tuple[tuple[torch.nn.Module, str, torch.nn.Module], ...]
    #: The Hugging Face embedding module (unwrapped) and base model (``hf.base_model``).
    embed: torch.nn.Module
    base: torch.nn.Module
    config: Any


#: Per model: ``(ids of every module in walk order, plan)``; rebuilt when the module tree changes.
_PLANS: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], DirectPlan]]" = weakref.WeakKeyDictionary()


def _global_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    return any(getattr(torch_module, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))


def _modules_allow_direct(modules: list[Any], classes: frozenset[type]) -> bool:
    """Every module known and unpatched, no hook point hooked, no user torch hook (one pass)."""
    get = dict.get
    for module in modules:
        state = module.__dict__
        if "forward" in state:
            return False
        # Written out (no generator): this runs for each of the ~2,000 modules of every call.
        hooked = (get(state, "_forward_hooks") or get(state, "_forward_pre_hooks") or get(state, "_backward_hooks")
                  or get(state, "_backward_pre_hooks"))
        if "fwd_hooks" in state:  # a TransformerLens hook point: any hook at all is someone's
            if hooked or state["fwd_hooks"] or get(state, "bwd_hooks"):
                return False
            continue
        cls = type(module)
        if cls in classes:
            if hooked and has_user_hooks(module):
                return False
            if cls.__name__ == "RMSNormalizationBridge" and not state.get("use_native_layernorm_autograd"):
                return False  # the python-norm path rounds differently from the HF module
            continue
        if not cls.__module__.startswith(_KNOWN_PACKAGES) and cls.__name__ != "TransformerBridge":
            return False
        if cls.__name__ == "TransformerBridge" and not cls.__module__.startswith("transformer_lens."):
            return False
        if hooked and has_user_hooks(module):
            return False
    return True


def _build(model: Any, hf: torch.nn.Module, classes: frozenset[type]) -> Optional[DirectPlan]:
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    stack: list[torch.nn.Module] = [hf]
    seen: set[int] = set()
    while stack:
        parent = stack.pop()
        if id(parent) in seen:
            continue
        seen.add(id(parent))
        for name, child in parent._modules.items():
            if child is None:
                continue
            while type(child) in classes:
                swaps.append((parent, name, child))
                child = getattr(child, "original_component", None)
                if not isinstance(child, torch.nn.Module):
                    return None
                if type(child) in classes:  # a component wrapping a component: not a layout we know
                    return None
            stack.append(child)
    embed: Any = getattr(hf, "get_input_embeddings")()
    if type(embed) in classes:
        embed = embed.original_component
    base = getattr(hf, "base_model", None)
    if not isinstance(embed, torch.nn.Module) or not isinstance(base, torch.nn.Module) or base is hf:
        return None
    return DirectPlan(tuple(swaps), embed, base, hf.config)


def direct_plan(access: ModelAccess) -> Optional[DirectPlan]:
    """The plan for running ``access.model`` directly, or None when the bridge path must run."""
    model = access.model
    if not ENABLED[0] or access.backend != "bridge" or getattr(model, "_weights_processed", False):
        return None
    hf = getattr(model, "original_model", None)
    if not isinstance(hf, torch.nn.Module) or type(hf).__name__ not in DIRECT_ARCHITECTURES:
        return None
    if not type(hf).__module__.startswith("transformers.models."):
        return None
    if len(set((getattr(hf, "hf_device_map", None) or {}).values())) > 1 or int(getattr(access.cfg, "n_devices", 1) or 1) > 1:
        return None
    if _global_hooks():
        return None
    classes = component_classes()
    if not classes:
        return None
    modules = walked_modules(model) or all_modules(model)  # frozen()'s walk of this call, when inside it
    if not _modules_allow_direct(modules, classes):
        return None
    key = tuple(map(id, modules))
    found = _PLANS.get(model)
    if found is not None and found[0] == key:
        return found[1]
    plan = _build(model, hf, classes)
    if plan is None:
        return None
    _PLANS[model] = (key, plan)
    return plan


@contextlib.contextmanager
def _unwrapped(plan: DirectPlan) -> Iterator[None]:
    """For the duration, every bridge component in the HF model is its wrapped module, and the
    HF config selects SDPA (as :func:`.engine._attention_running` does on the bridge path)."""
    before = plan.config._attn_implementation
    done = 0
    try:
        plan.config._attn_implementation = "sdpa"
        for parent, name, component in plan.swaps:
            parent._modules[name] = getattr(component, "original_component")
            done += 1
        yield
    finally:
        for parent, name, component in plan.swaps[:done]:
            parent._modules[name] = component
        plan.config._attn_implementation = before


def run_direct(plan: DirectPlan, tokens: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, leaf, x)``: the final hidden state, the embedding leaf (``hook_embed``'s shape) and the
    embedding module's output, with ``x = m·embed + leaf`` entering the model as on the bridge path."""
    with _unwrapped(plan):
        act = plan.embed(tokens)
        leaf = torch.zeros_like(act, requires_grad=True)
        # hook_embed before a fixed scale m: adding leaf/m there adds leaf to x = m·hook_embed.
        inputs = act + leaf if scale == 1.0 else act + leaf / scale
        out = plan.base(inputs_embeds=inputs)
    y = out[0] if isinstance(out, tuple) else out.last_hidden_state
    return y, leaf, act
