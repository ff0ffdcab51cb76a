"""The one mechanism every scope shares: a forward pass with leaf perturbations, then VJPs.

A zero-valued leaf tensor is added to each perturbed activation in a forward hook
(``act + delta``), so ``d(v·y)/d(delta)`` is exactly ``v^T dy/d(act)`` for every position
at once, on any backend, including hooks whose tensors are reshaped views (every
``hook_z`` on TransformerBridge). The forward pass stops as soon as ``y`` (the input of
the unembedding) is captured: no full-vocabulary logits are computed for positions that
are not explained.

A TransformerBridge reimplements attention step by step (eager: every layer keeps its
``T x T`` probabilities for the backward pass) so that hooks such as ``hook_pattern`` fire.
When no hook inside attention is needed (token-level scopes), the pass instead runs each
layer's wrapped Hugging Face attention with PyTorch's ``scaled_dot_product_attention``
(:func:`attention_kernel`): same result to float precision, no ``T x T`` tensor kept.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import types
import warnings
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import ArchitectureError, MissingHookError, ScopeError, ScopeMemoryError
from ..models.access import ModelAccess, has_user_hooks
from ..models.hook_names import EMBED_HOOK, FINAL_HOOK, internal_hook_names
from .direct_forward import direct_plan, run_direct


#: Per thread: the models whose instrumented forward pass is running (nested calls are refused).
_ACTIVE = threading.local()


class _StopForward(Exception):
    """Raised from the final hook: nothing after y is needed."""


@dataclass
class ForwardState:
    """What one instrumented forward pass leaves behind.

    Attributes:
        y: Final hidden state ``[batch, pos, d_model]``, connected to the graph.
        leaves: Zero perturbation added at each hook, by hook name, ``[batch, pos, ...]``.
        activations: Detached activation at each perturbed hook, by hook name.
    """

    y: Float[Tensor, "batch pos d_model"]
    leaves: dict[str, Tensor] = field(default_factory=dict)
    activations: dict[str, Tensor] = field(default_factory=dict)
    #: ``m`` with ``x = m · hook_embed`` the token's vector as it enters the residual stream
    #: (:func:`embedding_leaf`); the ``hook_embed`` leaf and activation are ``x``'s.
    embed_scale: float = 1.0


def forward_to_final_hidden(
    access: ModelAccess,
    tokens: Int[Tensor, "batch pos"],
    perturb: Sequence[str] = (EMBED_HOOK,),
    keep_activations: bool = False,
    extra_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    kernel: Optional[str] = None,
    **forward_kwargs: Any,
) -> ForwardState:
    """Run the model through its hooks up to ``unembed.hook_in`` with leaf perturbations.

    ``extra_hooks`` (e.g. interventions) run before the leaves are added at the same hook.
    ``kernel``: the call's :func:`attention_kernel` for these hooks, when already known.
    Call inside ``access.frozen()`` so that no parameter gradient is built.
    """
    state = ForwardState(y=torch.empty(0))
    if EMBED_HOOK in perturb:
        state.embed_scale = embedding_leaf(access, tokens).scale

    def add_leaf(act: Tensor, hook: Any, name: str) -> Tensor:
        leaf = torch.zeros_like(act, requires_grad=True)
        state.leaves[name] = leaf
        scale = state.embed_scale if name == EMBED_HOOK else 1.0
        if keep_activations:
            state.activations[name] = act.detach() if scale == 1.0 else (act * scale).detach()
        # hook_embed before a fixed scale m: adding leaf/m there adds leaf to x = m·hook_embed.
        return act + leaf if scale == 1.0 else act + leaf / scale

    def capture_final(act: Tensor, hook: Any) -> None:
        state.y = act
        raise _StopForward

    fwd_hooks = list(extra_hooks) + [(name, partial(add_leaf, name=name)) for name in perturb]
    fwd_hooks.append((FINAL_HOOK, capture_final))
    active = _ACTIVE.__dict__.setdefault("models", set())
    if id(access.model) in active:
        # Our hooks are attached for the outer pass and would fire in the inner one too.
        raise ScopeError(
            "A scope was called on this model from inside another scope's forward pass (from a hook?): "
            "that would mix the two calls' hooks. Collect what you need in the hook and run the second "
            "scope after the first returns."
        )
    if kernel is None:
        kernel = attention_kernel(access, [name for name, _ in fwd_hooks])
    # ---- issue 24: the direct pass (direct_forward.py), bit-for-bit the bridge's, when nothing else would fire
    if kernel == "sdpa" and not extra_hooks and not forward_kwargs and tuple(perturb) == (EMBED_HOOK,):
        plan = direct_plan(access)
        if plan is not None:
            active.add(id(access.model))
            try:
                with torch.enable_grad():
                    state.y, leaf, act = run_direct(plan, tokens, state.embed_scale)
            finally:
                active.discard(id(access.model))
            state.leaves[EMBED_HOOK] = leaf
            if keep_activations:
                scale = state.embed_scale
                state.activations[EMBED_HOOK] = act.detach() if scale == 1.0 else (act * scale).detach()
            return state
    # ---- end of the direct pass
    active.add(id(access.model))
    try:
        with torch.enable_grad(), _attention_running(access, kernel), access.model.hooks(fwd_hooks=fwd_hooks):
            try:
                run_model(access, tokens, **forward_kwargs)
            except _StopForward:
                pass
    finally:
        active.discard(id(access.model))
    if state.y.numel() == 0:
        raise MissingHookError(
            f"The forward pass never reached '{FINAL_HOOK}', where the scopes read y: a hook that ends the "
            "forward pass early, or a model whose unembedding hook is not called. Remove such hooks, or load "
            "the model with TransformerLens so that the hook fires."
        )
    unreached = [name for name in perturb if name not in state.leaves]
    if unreached:
        raise MissingHookError(
            f"The forward pass never reached the hook point(s) {unreached} before '{FINAL_HOOK}' "
            f"({model_family(access)}, {access.backend}): TransformerLens's support for this family does not "
            "run them where the residual stream flows, so no sensitivity can be taken there. Run without "
            "internals=True, or use another TransformerLens version or backend for this family."
        )
    return state


# ---- upstream faults ---------------------------------------------------------------------------

#: Exceptions that, raised inside TransformerLens's or transformers' code, mean the family's
#: forward pass is broken upstream (e.g. CodeGen on TransformerLens 4.3's bridge).
_UPSTREAM = (AttributeError, NotImplementedError)
_UPSTREAM_PATHS = ("/transformer_lens/", "/transformers/")


def model_family(access: ModelAccess) -> str:
    """The model's architecture name (``cfg.architecture``, else the HF config's), for messages."""
    name = getattr(access.cfg, "architecture", None)
    if not name:
        archs = getattr(getattr(getattr(access.model, "original_model", None), "config", None), "architectures", None)
        name = archs[0] if archs else type(access.model).__name__
    return str(name)


def _raised_upstream(exc: BaseException) -> bool:
    """True when the innermost frame outside torch lies in TransformerLens or transformers."""
    files = []
    tb = exc.__traceback__
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename.replace("\\", "/"))
        tb = tb.tb_next
    while files and "/torch/" in files[-1]:
        files.pop()
    return bool(files) and any(part in files[-1] for part in _UPSTREAM_PATHS)


def _raised_by_transformer_lens(exc: BaseException) -> bool:
    """True when a plain RuntimeError was raised by TransformerLens's own code (e.g. "Original
    component not set" on GraniteMoeHybrid's bridge), not by a torch operation (out of memory, ...)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        tb = tb.tb_next
    return last is not None and "/transformer_lens/" in last


def run_model(access: ModelAccess, *args: Any, **kwargs: Any) -> Any:
    """``access.model(*args, **kwargs)``; an AttributeError or NotImplementedError raised inside
    TransformerLens or transformers becomes an :class:`~..errors.ArchitectureError` naming the family."""
    try:
        return access.model(*args, **kwargs)
    except (*_UPSTREAM, RuntimeError) as exc:
        if not (_raised_by_transformer_lens(exc) if type(exc) is RuntimeError else
                isinstance(exc, _UPSTREAM) and _raised_upstream(exc)):
            raise
        raise ArchitectureError(
            f"TransformerLens cannot run this model's forward pass ({model_family(access)}, {access.backend}, "
            f"TransformerLens {_tl_version()}): {type(exc).__name__}: {exc}. This is a fault in TransformerLens's "
            "support for the family, not in your inputs: try the other backend (HookedTransformer / "
            "TransformerBridge) or another TransformerLens version, and report it to TransformerLens."
        ) from exc


def _tl_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformer-lens")
    except Exception:
        return "unknown"


# ---- the embedding leaf ----------------------------------------------------------------------

#: ``params["embedding_leaf"]`` when the leaf is the token's vector as it enters the residual stream.
RESIDUAL_INPUT = "residual_input"
#: ... when ``blocks.0.hook_resid_pre`` is no scalar multiple of ``hook_embed`` (plus positions):
#: the leaf is ``hook_embed`` as TransformerLens exposes it.
HOOK_EMBED = "hook_embed_unverified"


@dataclass(frozen=True)
class EmbeddingLeaf:
    """Where the token leaf sits (docs/method.md §1): ``x = scale · hook_embed``."""

    scale: float
    label: str


_LEAVES: "weakref.WeakKeyDictionary[Any, tuple[Any, EmbeddingLeaf]]" = weakref.WeakKeyDictionary()


def embedding_leaf(access: ModelAccess, tokens: Tensor) -> EmbeddingLeaf:
    """The factor ``m`` between ``hook_embed`` and the token's vector as it enters the residual
    stream, measured once per model (cached until ``W_E`` changes) from one embedding-only pass
    over two rows (the call's first tokens, and the same reversed).

    The difference of ``blocks.0.hook_resid_pre`` between the rows (positional embeddings cancel)
    is compared with that of ``hook_embed``: TransformerLens 4.x's bridge exposes Granite's ``embedding_multiplier``
    at ``hook_embed`` (``m = 1``), 3.9's does not (``m = 12`` on granite-3), and either bridge
    shows Gemma's embedding before its ``√d`` normalizer (``m = √d``). Not a scalar multiple
    (a non-linear step between them): ``m = 1`` and the label says the leaf is unverified.
    """
    model = access.model
    W_E = model.W_E
    key = (W_E.data_ptr(), None if W_E.is_inference() else W_E._version, tuple(W_E.shape), W_E.dtype)
    found = _LEAVES.get(model)
    if found is not None and found[0] == key:
        leaf: EmbeddingLeaf = found[1]
        return leaf
    seen: dict[str, Tensor] = {}
    first_block = "blocks.0.hook_resid_pre"

    def keep(act: Any, hook: Any, name: str) -> None:
        if isinstance(act, Tensor):
            seen[name] = act.detach()
        if name == first_block:
            raise _StopForward

    names = [n for n in (EMBED_HOOK, first_block) if n in model.hook_dict]
    row = tokens.reshape(-1, tokens.shape[-1])[:1, :8]
    # The same tokens in reverse order: additive positional embeddings (hooked or not, learned or
    # sinusoidal) depend on the position alone, so they cancel in the difference of the two rows.
    rows = torch.cat([row, row.flip(-1)])
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, partial(keep, name=n)) for n in names]):
            run_model(access, rows)
    except _StopForward:
        pass
    measured = _measure(seen.get(EMBED_HOOK), seen.get(first_block), access.dtype)
    if measured is None:  # one token, or a palindrome: measured again on the next call's tokens
        return EmbeddingLeaf(1.0, HOOK_EMBED)
    _LEAVES[model] = (key, measured)
    return measured


def _measure(embed: Optional[Tensor], resid: Optional[Tensor], dtype: torch.dtype) -> Optional[EmbeddingLeaf]:
    """``m`` from ``resid[0] - resid[1] = m (embed[0] - embed[1])`` (positions cancel), when it holds."""
    if embed is None or resid is None or embed.shape != resid.shape or embed.shape[0] != 2:
        return EmbeddingLeaf(1.0, HOOK_EMBED)
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
    a = (embed[0].double() - embed[1].double()).flatten()
    r = (resid[0].double() - resid[1].double()).flatten()
    if float(a.norm()) == 0.0:  # a palindrome (or one token): nothing to compare
        return None
    m = float((r @ a) / (a @ a))
    if m > 0 and float((r - m * a).norm()) <= tol * float(r.norm()):
        return EmbeddingLeaf(1.0 if abs(m - 1) <= tol else m, RESIDUAL_INPUT)
    return EmbeddingLeaf(1.0, HOOK_EMBED)


# ---- attention kernel ----------------------------------------------------------------------

#: Bridge config flags that route attention through per-head paths only the eager code has.
_EAGER_ONLY_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in")
#: HF attention attributes whose SDPA path differs from the bridge's eager one (softcapping, sinks).
_EAGER_ONLY_ATTRS = ("attn_logit_softcapping", "sinks")


def _sdpa_attention_modules(access: ModelAccess) -> Optional[list[Any]]:
    """The bridge's attention modules when all of them can run the wrapped HF attention
    with SDPA and give the same result (plain rotary attention); None otherwise."""
    if access.backend != "bridge" or any(getattr(access.cfg, f, False) for f in _EAGER_ONLY_FLAGS):
        return None
    try:
        from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
            PositionEmbeddingsAttentionBridge,
        )
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return None
    config = getattr(getattr(access.model, "original_model", None), "config", None)
    blocks = getattr(access.model, "blocks", None)
    if "sdpa" not in ALL_ATTENTION_FUNCTIONS or not hasattr(config, "_attn_implementation") or not blocks:
        return None
    modules = [getattr(block, "attn", None) for block in blocks]
    for attn in modules:
        # Exact type: subclasses add steps (gates, norms) the HF module may not share.
        if type(attn) is not PositionEmbeddingsAttentionBridge or "forward" in vars(attn):
            return None
        hf_attn = attn.original_component
        if getattr(hf_attn, "config", None) is not config or any(
            getattr(hf_attn, a, None) is not None for a in _EAGER_ONLY_ATTRS
        ):
            return None
    return modules


def attention_kernel(access: ModelAccess, hook_names: Sequence[str] = (EMBED_HOOK, FINAL_HOOK)) -> str:
    """The attention a scope's forward pass runs: ``"sdpa"`` or ``"eager"``.

    ``"sdpa"`` (PyTorch's fused ``scaled_dot_product_attention``, no ``T x T`` tensor kept
    for backward) when the model is a TransformerBridge with plain rotary attention, none of
    ``hook_names`` lies inside an attention module, and no hook is attached inside one
    (a user's ``hook_pattern`` hook still fires: eager is kept). ``"eager"`` otherwise,
    and always for a HookedTransformer, whose attention is its own einsum code.

    Examples:
        >>> attention_kernel(ModelAccess(model))  # a TransformerBridge; 'eager' on a HookedTransformer
        'sdpa'
        >>> attention_kernel(ModelAccess(model), ["blocks.0.attn.hook_z"])
        'eager'
    """
    modules = _sdpa_attention_modules(access)
    if modules is None or _global_torch_hooks():
        return "eager"
    hooked: list[Any] = []
    inside = _hook_points_within(modules, hooked)
    if hooked:
        # A torch hook on a module inside attention (e.g. the wrapped HF attention): SDPA calls that
        # module and would apply it, the bridge's own (eager) attention, which model(tokens) runs, does
        # not. Eager explains the model that model(tokens) runs.
        return "eager"
    hook_dict = access.model.hook_dict
    if any(id(hook_dict.get(name)) in inside for name in hook_names):
        return "eager"
    for hp in inside.values():
        if hp.fwd_hooks or getattr(hp, "bwd_hooks", None) or hp._forward_hooks or hp._backward_hooks:
            return "eager"
    return "sdpa"




def _global_torch_hooks() -> bool:
    """True when a hook is registered for every module (``register_module_forward_hook``, ...)."""
    from torch.nn.modules import module as torch_module

    return any(getattr(torch_module, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))


def unembed_hooked(access: ModelAccess) -> bool:
    """True when a hook may change the logits after ``y``: a torch hook on the model itself, on the
    HF model a bridge wraps, on the unembedding (or on the module it wraps), a hook on any of the
    unembedding's hook points but ``hook_in``, or a torch hook registered for every module. The scopes compute the logits from ``y`` and ``W_U``
    themselves, so such a hook is harmless only if it leaves them unchanged: the self-check
    (:mod:`.output_check`) then verifies every call instead of once per model.
    """
    # A hook on the model itself (or the HF model a bridge wraps) sees the logits too.
    for root in (access.model, getattr(access.model, "original_model", None)):
        if isinstance(root, torch.nn.Module) and has_user_hooks(root):
            return True
    unembed = getattr(access.model, "unembed", None)
    read = unembed._modules.get("hook_in") if unembed is not None else None
    stack: list[Any] = [unembed]
    while stack:
        module = stack.pop()
        if module is None:
            continue
        state = vars(module)
        if "fwd_hooks" in state:  # a TransformerLens hook point: only hook_in (before the logits) is read
            hooked = module is not read and bool(
                module.fwd_hooks or getattr(module, "bwd_hooks", None) or module._forward_hooks)
        else:
            hooked = has_user_hooks(module)
        if hooked:
            return True
        stack.extend(module._modules.values())
    return _global_torch_hooks()


def _hook_points_within(modules: Sequence[Any], hooked: Optional[list[Any]] = None) -> dict[int, Any]:
    """Every hook point inside ``modules`` (theirs and their wrapped HF modules'), by id.

    ``hooked``: when given, every module that is not a hook point and carries a torch hook
    (forward, pre-forward or backward) is appended to it, in the same walk.

    Walked over ``_modules`` directly: ``Module.modules()`` builds every name and a bridge
    component's ``hasattr`` goes through its ``__getattr__`` (together ~8 ms per call on the
    default model, against ~0.3 ms here). A hook point keeps ``fwd_hooks`` in its ``__dict__``.
    """
    seen: set[int] = set()
    found: dict[int, Any] = {}
    stack: list[Any] = list(modules)
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        state = vars(module)
        if "fwd_hooks" in state:
            found[id(module)] = module
        elif hooked is not None and (state.get("_forward_hooks") or state.get("_forward_pre_hooks")
                                     or state.get("_backward_hooks") or state.get("_backward_pre_hooks")) \
                and has_user_hooks(module):  # the dicts first: most modules hold nothing (issue 24)
            hooked.append(module)
        stack.extend(module._modules.values())
    return found


@contextlib.contextmanager
def _attention_running(access: ModelAccess, kernel: str) -> Iterator[None]:
    """For the duration, with ``kernel="sdpa"``: each bridge attention module delegates to its
    wrapped HF module (``hook_in`` -> HF attention -> ``hook_out``) and the HF config selects
    SDPA. Both are restored afterwards, whatever happens (an error, an interrupt)."""
    modules = _sdpa_attention_modules(access) if kernel == "sdpa" else None
    if modules is None:
        yield
        return
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    config = access.model.original_model.config
    before = config._attn_implementation
    try:
        config._attn_implementation = "sdpa"
        for attn in modules:
            # vars(): the bridge's __setattr__ would forward "forward" to the wrapped HF module.
            vars(attn)["forward"] = types.MethodType(AttentionBridge.forward, attn)
        yield
    finally:
        for attn in modules:
            vars(attn).pop("forward", None)
        config._attn_implementation = before


def _no_batching_rule(exc: RuntimeError) -> bool:
    """True for the error vmap raises when an op has no batching rule (nothing else)."""
    text = str(exc)
    return "Batching rule not implemented" in text or "vmap" in text and "not supported" in text


def batched_vjp(
    output: Float[Tensor, "... d_model"],
    inputs: Sequence[Tensor],
    probes: Float[Tensor, "n_probes ... d_model"],
    chunk_size: int,
) -> Iterator[tuple[slice, tuple[Tensor, ...]]]:
    """Yield ``(probe_slice, grads)``, ``grads[i]`` of shape ``[chunk, *inputs[i].shape]``.

    Probes are pushed through one backward pass per chunk (vectorized with
    ``is_grads_batched``); only one chunk's VJPs are ever held at once. If an op of this
    model has no batching rule, this call (only) falls back to one backward per probe;
    any other error, out-of-memory included, propagates unchanged.
    """
    n_probes = probes.shape[0]
    probes = probes.to(device=output.device, dtype=output.dtype)
    batched, batched_worked = True, False
    for start in range(0, n_probes, chunk_size):
        stop = min(start + chunk_size, n_probes)
        retain = stop < n_probes
        chunk = probes[start:stop]
        if chunk.shape[0] == 1:
            grads = torch.autograd.grad(output, inputs, grad_outputs=chunk[0], retain_graph=retain)
            yield slice(start, stop), tuple(g.unsqueeze(0) for g in grads)
            continue
        if batched:
            try:
                # The graph is kept until a batched pass has worked: the fallback needs it.
                grads = torch.autograd.grad(
                    output, inputs, grad_outputs=chunk, retain_graph=retain or not batched_worked,
                    is_grads_batched=True,
                )
                batched_worked = True
                yield slice(start, stop), grads
                continue
            except RuntimeError as exc:
                if isinstance(exc, torch.OutOfMemoryError) or not _no_batching_rule(exc):
                    raise
                batched = False
                warnings.warn(f"Batched VJPs unavailable for this model ({exc}); using one backward per probe.")
        per_probe = [
            torch.autograd.grad(output, inputs, grad_outputs=p, retain_graph=True) for p in chunk
        ]
        yield slice(start, stop), tuple(torch.stack(gs) for gs in zip(*per_probe))


# ---- memory -------------------------------------------------------------------------------


def available_memory(device: torch.device) -> Optional[int]:
    """Free bytes on a device (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def _dtype_bytes(access: ModelAccess) -> int:
    return torch.finfo(access.dtype).bits // 8


def forward_memory(access: ModelAccess, n_tokens: int, batch: int = 1, kernel: str = "eager") -> int:
    """Rough upper estimate of the bytes a grad-enabled forward pass keeps for backward.

    Eager attention keeps ``T x T`` scores and probabilities per head and layer; SDPA keeps
    only its output and a log-sum-exp per query (plus one boolean mask for the whole pass).
    """
    if kernel == "eager":
        # Hooked eager blocks keep more per token (hook copies, T x T scores and probabilities).
        per_layer = n_tokens * (16 * access.d_model + 6 * access.d_mlp) + 3 * access.n_heads * n_tokens**2
    else:
        # Saved for backward with SDPA on SmolLM2: 3 d_mlp + ~5 d_model floats per token and layer
        # (counted with saved_tensors_hooks); the peak during backward is ~10.4k floats, 1.3x below this.
        per_layer = n_tokens * (10 * access.d_model + 5 * access.d_mlp) + access.n_heads * n_tokens
    mask = 0 if kernel == "eager" else batch * n_tokens**2
    return batch * access.n_layers * per_layer * _dtype_bytes(access) + mask


def probe_memory(
    access: ModelAccess, n_tokens: int, batch: int = 1, n_leaves: int = 1, kernel: str = "eager"
) -> int:
    """Rough bytes one extra probe costs inside a batched backward pass (and its VJPs)."""
    per_probe = 6 * n_tokens * max(access.d_mlp, access.d_model)
    if kernel == "eager":
        per_probe += 3 * access.n_heads * n_tokens**2
    return batch * (per_probe * _dtype_bytes(access) + n_leaves * n_tokens * access.d_model * 4)


def scope_memory(access: ModelAccess, n_tokens: int, batch: int = 1, kernel: str = "eager") -> int:
    """The memory guard's estimate for a scope: the forward pass, one probe's backward, and a few
    float32 vocabulary-sized buffers (the explained logits, Fisher's probe construction)."""
    # Six: Fisher's probe construction peaks ~200 MiB above Semantic's on SmolLM2 (49k x 576).
    vocab_buffers = 6 * access.d_vocab * access.d_model * 4
    return (forward_memory(access, n_tokens, batch, kernel) + probe_memory(access, n_tokens, batch, kernel=kernel)
            + vocab_buffers)


def _budget(access: ModelAccess) -> Optional[int]:
    override = os.environ.get("TL_JACOBIAN_SCOPES_MEMORY_BUDGET")
    if override:
        try:
            budget = float(override)
        except ValueError:
            budget = math.nan
        if not (math.isfinite(budget) and budget > 0):
            raise ScopeError(
                f"TL_JACOBIAN_SCOPES_MEMORY_BUDGET={override!r} is not a positive number of bytes: set it to one "
                "(e.g. 8e9 for 8 GB) or unset it to use the device's free memory.")
        return int(budget)
    # A model split over devices spreads its layers (and their activations) over all of them.
    free = [available_memory(device) for device in access.devices]
    return None if None in free else int(0.8 * sum(f for f in free if f is not None))


def probes_memory(access: ModelAccess, n_probes: int, n_jobs: int, n_groups: int, workspace: int = 0) -> int:
    """Rough bytes a call's probe vectors take, all held at once before the backward passes.

    ``n_probes`` per job (Fisher: ``rank``, ``d_model`` for exact, ``samples + deflate``), over
    ``n_jobs`` explained predictions (every ``positions=`` of every prompt of a batch), fanned out
    into ``n_groups`` VJP groups (the most jobs of one prompt); ``workspace``: bytes one job's probes
    take to make (freed before the next job's).
    """
    vector = n_probes * n_jobs * access.d_model
    # Each job's probes, their stack, and the grouped VJP inputs (float32, plus a copy in the model's dtype).
    return vector * (2 * 4 + n_groups * (4 + _dtype_bytes(access))) + workspace


def _human(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def check_memory(access: ModelAccess, n_tokens: int, batch: int = 1, internals: bool = False,
                 kernel: Optional[str] = None, probes: int = 0, probes_hint: str = "") -> None:
    """Refuse, before any forward pass, a scope that would not fit in memory.

    The estimate follows the attention kernel the call will use (:func:`attention_kernel`):
    internal maps keep eager attention, token-level scopes on a bridge run SDPA (``kernel``: the
    call's kernel, when already decided). ``probes``: the bytes of the call's probe vectors
    (:func:`probes_memory`); ``probes_hint``: the options that set them, for the message.

    Raises:
        ScopeMemoryError: naming the estimate, the budget and the longest prompt that fits (or,
            when the probes alone take most of it, the options that make them).
    """
    budget = _budget(access)
    if budget is None:
        return
    if kernel is None:
        kernel = attention_kernel(access, internal_hook_names(access.n_layers) if internals else (EMBED_HOOK, FINAL_HOOK))
    need = scope_memory(access, n_tokens, batch, kernel) + probes
    if need <= budget:
        return
    where = ", ".join(map(str, access.devices))
    if probes > budget // 2:
        raise ScopeMemoryError(
            f"This call's probe vectors ({probes_hint or 'one per explained prediction'}) need about "
            f"{_human(probes)} on {where}, and the whole scope about {_human(need)}, but about "
            f"{_human(budget)} is available: use fewer probes (e.g. samples= or rank=), fewer positions= or "
            "a smaller batch_size=, or move the model to a larger device."
        )
    fits = n_tokens
    while fits > 1 and scope_memory(access, fits, batch, kernel) + probes > budget:
        fits = int(fits * 0.9)
    hint = " or run without internals=True (token scores use a lighter attention kernel)," if internals else ""
    raise ScopeMemoryError(
        f"A scope over {n_tokens} tokens needs about {need / 2**30:.1f} GiB on "
        f"{where}, but about {budget / 2**30:.1f} GiB is available: use a prompt of "
        f"at most about {fits} tokens,{hint} free memory, or move the model to a larger device."
    )


_probe_cap = threading.local()


@contextlib.contextmanager
def probe_chunk_cap(cap: Optional[int]) -> Iterator[None]:
    """At most ``cap`` probes per backward pass for the scope calls made in this thread inside
    the block (``None``: memory alone decides). Progress is reported, and a stop raised from a
    progress observer is seen, between chunks: a front end that shares one model between users
    (the app) keeps chunks small so that a stop or another user's request waits at most one.

    Examples:
        >>> with probe_chunk_cap(8):
        ...     r = tjs.fisher_scope(model, "The capital of France is", rank=2, progress=False)
    """
    if cap is not None and int(cap) < 1:
        raise ScopeError(f"probe_chunk_cap must be at least 1 (or None), got {cap}.")
    previous = getattr(_probe_cap, "value", None)
    _probe_cap.value = None if cap is None else int(cap)
    try:
        yield
    finally:
        _probe_cap.value = previous


def probe_chunk_size(
    access: ModelAccess, n_tokens: int, n_probes: int, n_leaves: int = 1, batch: int = 1, cap: int = 64,
    kernel: Optional[str] = None,
) -> int:
    """How many probes to push through one backward pass without exceeding memory (``kernel``:
    the forward pass's :func:`attention_kernel`, when known; at most ``cap``, and at most the
    :func:`probe_chunk_cap` in force)."""
    outer = getattr(_probe_cap, "value", None)
    cap = cap if outer is None else min(cap, outer)
    budget = _budget(access)
    if budget is None:
        return max(1, min(cap, n_probes))
    if kernel is None:
        # One leaf is the embedding alone (token scores); more are internal maps, which keep eager attention.
        kernel = attention_kernel(access) if n_leaves == 1 else "eager"
    spare = budget - forward_memory(access, n_tokens, batch, kernel)
    fit = max(1, spare // max(1, probe_memory(access, n_tokens, batch, n_leaves=n_leaves, kernel=kernel)))
    return int(max(1, min(cap, n_probes, fit)))

