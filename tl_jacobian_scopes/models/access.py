"""Uniform access to a TransformerLens model, whichever backend built it.

`HookedTransformer` (TransformerLens 3.x) and `TransformerBridge` (3.x and 4.x) share the
hook-point interface (`hooks()`, `hook_dict`, `to_tokens`, `W_U`, ...). This module reads
the few things a scope needs through that interface and nothing else, and guards the
model's state (train/eval mode, grad flags, hooks) around a scope.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from typing import Any, Iterator, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MissingHookError, ModelLoadError, ScopeError
from ..environment import backend_name as backend_name  # re-exported: the environment names backends too
from .hook_names import EMBED_HOOK, FINAL_HOOK
from .readout import LogitTransform, read_logit_transform


def architecture_name(model: Any) -> str:
    """The model's architecture (``cfg.architecture``, else the wrapped HF config's), for messages."""
    name = getattr(getattr(model, "cfg", None), "architecture", None)
    if not name:
        config = getattr(getattr(model, "original_model", None), "config", None)
        archs = getattr(config, "architectures", None)
        name = archs[0] if archs else type(model).__name__
    return str(name)


class ModelAccess:
    """The parts of a TransformerLens model that a Jacobian scope reads.

    Args:
        model: A `HookedTransformer` or `TransformerBridge`.
        required_hooks: Hook names the caller will attach to; each must exist.

    Raises:
        MissingHookError: If the model is not a TransformerLens model or lacks a hook.
    """

    def __init__(self, model: Any, required_hooks: tuple[str, ...] = (EMBED_HOOK, FINAL_HOOK)):
        # hook_dict is rebuilt on every read on a TransformerBridge: read it once.
        hook_dict = getattr(model, "hook_dict", None)
        if hook_dict is None or not all(hasattr(model, attr) for attr in ("hooks", "cfg")):
            raise MissingHookError(
                f"{type(model).__name__} is not a TransformerLens model: pass a HookedTransformer "
                "or a TransformerBridge (e.g. tl_jacobian_scopes.load_default_model())."
            )
        self.model = model
        self.backend = backend_name(model)
        hook_names = hook_dict.keys()
        missing = [name for name in required_hooks if name not in hook_names]
        if missing:
            raise MissingHookError(
                f"{type(model).__name__} ({architecture_name(model)}) has no hook point(s) {missing}; Jacobian scopes perturb "
                f"'{EMBED_HOOK}' and read '{FINAL_HOOK}'. Load the model with TransformerLens "
                "(HookedTransformer.from_pretrained_no_processing or "
                "TransformerBridge.boot_transformers) so that these hooks exist."
            )
        self.cfg = model.cfg

    # ---- shapes and weights -------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return str(getattr(self.cfg, "model_name", "") or "")

    @property
    def n_ctx(self) -> int:
        return int(self.cfg.n_ctx)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def d_mlp(self) -> int:
        return int(getattr(self.cfg, "d_mlp", None) or 4 * self.d_model)

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        W_U: Tensor = self.model.W_U
        return W_U

    @property
    def b_U(self) -> Optional[Float[Tensor, " d_vocab"]]:
        return getattr(self.model, "b_U", None)

    @property
    def logit_transform(self) -> LogitTransform:
        """The post-unembedding transform ``g`` TransformerLens declares (read once per access)."""
        found: Optional[LogitTransform] = self.__dict__.get("_logit_transform")
        if found is None:
            found = self.__dict__["_logit_transform"] = read_logit_transform(self.model, self.backend)
        return found

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[-1])

    @property
    def input_device(self) -> torch.device:
        """Device of the token embedding: where tokens must go."""
        device: torch.device = self.model.W_E.device
        return device

    @property
    def devices(self) -> list[torch.device]:
        """Every device holding the model's weights, input device first (one unless the model
        was split with ``n_devices`` / ``device_map``: only then are the weights walked)."""
        if int(getattr(self.cfg, "n_devices", 1) or 1) <= 1:
            return [self.input_device]
        found = dict.fromkeys([self.input_device] + [p.device for p in self.model.parameters()])
        return list(found)

    @property
    def dtype(self) -> torch.dtype:
        return self.W_U.dtype

    # ---- tokenization -------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    def to_tokens(self, text: str, prepend_bos: Optional[bool]) -> torch.Tensor:
        # truncate=False: a too-long prompt must be refused, never silently cut.
        tokens: Tensor = self.model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)
        return tokens

    def to_str_tokens(self, tokens: torch.Tensor) -> list[str]:
        if self.tokenizer is None:
            return [str(int(t)) for t in tokens]
        return list(self.model.to_str_tokens(tokens.reshape(-1)))

    def token_str(self, token_id: int) -> str:
        if self.tokenizer is None:
            return str(token_id)
        return str(self.tokenizer.decode([int(token_id)]))

    # ---- processed weights --------------------------------------------------------------

    def final_norm_folded(self) -> bool:
        """True when the final norm's scale was folded into W_U (so ‖y‖ is constant)."""
        if self.backend == "hooked":
            return str(getattr(self.cfg, "normalization_type", "")).endswith("Pre")
        if getattr(self.model, "_weights_processed", False):
            adapter = getattr(self.model, "adapter", None)
            return bool(getattr(adapter, "_fold_ln_requested", True))
        return False

    def final_norm_without_scale(self) -> Optional[str]:
        """The final norm's class name when it has no scale parameter at all (OLMo v1's LayerNorm),
        so that ‖y‖ is constant by construction on raw weights; None otherwise, or when the
        weights were processed (a folded norm also has no scale: :meth:`final_norm_folded`).
        A weight of exactly ones is not "no scale": it is what an unflagged fold leaves."""
        # ``ln_final``; a recurrent-depth bridge (HRM) has one per stack: ``H_ln_final``, ``L_ln_final``.
        norms = [m for name, m in getattr(self.model, "_modules", {}).items()
                 if isinstance(m, torch.nn.Module) and (name == "ln_final" or name.endswith("_ln_final"))]
        if not norms or self.final_norm_folded():
            return None
        if any(n.rsplit(".", 1)[-1] in ("weight", "w") for norm in norms for n, _ in norm.named_parameters()):
            return None
        inner = getattr(norms[0], "original_component", None)
        return type(inner if isinstance(inner, torch.nn.Module) else norms[0]).__name__

    def unembed_centered(self) -> bool:
        """True when W_U was centered over the vocabulary (`center_unembed=True`).

        One pass over W_U, cached on the model until the weights change.
        """
        W_U = self.W_U.detach()
        key = (W_U.data_ptr(), W_U._version, tuple(W_U.shape))
        cached = getattr(self.model, "_tjs_unembed_centered", None)
        if cached is not None and cached[0] == key:
            return bool(cached[1])
        row_means = W_U.sum(dim=-1, dtype=torch.float32).abs().max() / W_U.shape[-1]
        scale = W_U[:, :4096].float().abs().mean()
        centered = bool(row_means <= 1e-5 * scale)
        self.model._tjs_unembed_centered = (key, centered)
        return centered

    # ---- state guard --------------------------------------------------------------------

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Run a scope on this model: exclusive, in eval mode, with gradients to inputs only.

        For the duration: calls on the same model from other threads wait (they would
        otherwise see each other's frozen flags), every module is in eval mode, no parameter
        requires grad (halving the backward pass), and autograd is on even under the
        caller's ``torch.no_grad()``, ``set_grad_enabled(False)`` or ``inference_mode()``.
        Afterwards, whatever happened (an error, an interrupt), each module's own train/eval
        flag, each parameter's ``requires_grad`` and the caller's grad mode are as before.
        """
        model = self.model
        with model_lock(model):
            modules = all_modules(model)
            refuse_backward_hooks(modules)
            outer = _WALKS.get(model)
            params = list({id(p): p for m in modules for p in m._parameters.values() if p is not None}.values())
            if any(p.is_inference() for p in params):
                raise ModelLoadError(
                    "The model's weights are inference tensors (it was loaded or moved under "
                    "torch.inference_mode()), which autograd cannot differentiate through: load it "
                    "outside inference_mode (loading under torch.no_grad() is fine)."
                )
            modes = [module.training for module in modules]
            flags = [p.requires_grad for p in params]
            try:
                # eval() walks every module through nn.Module.__setattr__ (about 60 ms on the
                # default bridge): call it only when some module is in training mode (a model
                # already in eval mode is left untouched, as eval() would leave it).
                if any(modes):
                    model.eval()
                for p in params:
                    if p.requires_grad:
                        p.requires_grad_(False)
                _WALKS[model] = modules  # for the direct pass's checks (walked_modules), this call only
                with torch.inference_mode(False), torch.enable_grad():
                    yield
            finally:
                if outer is None:
                    _WALKS.pop(model, None)
                else:
                    _WALKS[model] = outer
                # Only what differs is written back (a write goes through nn.Module.__setattr__).
                for module, training in zip(modules, modes):
                    if module.training != training:
                        module.training = training
                for p, flag in zip(params, flags):
                    if p.requires_grad != flag:
                        p.requires_grad_(flag)


#: The module walk of the scope call running on each model (inside :meth:`ModelAccess.frozen`).
_WALKS: "weakref.WeakKeyDictionary[Any, list[Any]]" = weakref.WeakKeyDictionary()


def walked_modules(model: Any) -> Optional[list[Any]]:
    """:func:`all_modules` as the running scope call's :meth:`ModelAccess.frozen` walked it (the
    model is locked for the call, so it is current), or None outside a call."""
    return _WALKS.get(model)


def all_modules(model: Any) -> list[Any]:
    """Every module whose state a scope touches: the model's own and, for a TransformerBridge,
    those of the wrapped Hugging Face model (``model.eval()`` reaches them, ``modules()`` does not).

    The same set as ``model.modules()`` plus ``original_model.modules()``, walked directly over
    each module's children (several times faster than ``modules()``, which builds every name).
    """
    found: dict[int, Any] = {}
    stack: list[Optional[torch.nn.Module]] = [
        root for root in (model, getattr(model, "original_model", None)) if isinstance(root, torch.nn.Module)]
    pop, push = stack.pop, stack.extend
    while stack:
        module = pop()
        if module is None or id(module) in found:  # an unset child slot, or a module met before
            continue
        found[id(module)] = module
        push(module._modules.values())
    return list(found.values())


#: A module's torch hook dicts (any of them holding a user's hook: the module is hooked).
TORCH_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
#: Packages whose own hooks are part of the model (TransformerLens wires capture hooks on its first
#: forward pass, e.g. a bridge block's ``_capture_pre_ln1``): not a user's edit.
_LIBRARY_HOOK_PACKAGES = ("transformer_lens.", "transformers.", "torch.", "accelerate.")


def has_user_hooks(module: Any, names: tuple[str, ...] = TORCH_HOOK_DICTS) -> bool:
    """True when one of ``module``'s torch hook dicts ``names`` holds a hook that is not the
    model's own (TransformerLens's, transformers', torch's or Accelerate's)."""
    state = vars(module)
    for name in names:
        for hook in (state.get(name) or {}).values():
            fn = getattr(hook, "func", hook)  # functools.partial
            origin = str(getattr(fn, "__module__", "") or "")
            if not origin.startswith(_LIBRARY_HOOK_PACKAGES):
                return True
    return False


def refuse_backward_hooks(modules: list[Any]) -> None:
    """Raise :class:`ScopeError` when a backward hook sits on one of ``modules`` (a torch
    ``register_full_backward_hook`` / ``..._pre_hook``, which a TransformerLens ``add_hook(...,
    dir="bwd")`` is too) or on every module: the scopes are gradients, and such a hook may rescale
    them without changing the forward pass, where the self-check looks."""
    from torch.nn.modules import module as torch_module

    # A TransformerLens hook point wraps its hooks in its own function: its bwd_hooks list names them.
    # Cheap test first (every module of every call): only a module holding something is examined.
    hooked = next((m for m in modules if (m.__dict__.get("_backward_hooks") or m.__dict__.get("_backward_pre_hooks")
                                          or m.__dict__.get("bwd_hooks"))
                   and (has_user_hooks(m, ("_backward_hooks", "_backward_pre_hooks")) or m.__dict__.get("bwd_hooks"))),
                  None)
    if hooked is None and not (getattr(torch_module, "_global_backward_hooks", None)
                               or getattr(torch_module, "_global_backward_pre_hooks", None)):
        return
    where = f"on a {type(hooked).__name__}" if hooked is not None else "registered for every module"
    raise ScopeError(
        f"A backward hook is attached ({where}): the scopes are gradients, which such a hook can change "
        "without changing the model's output. Remove it for the scope call (handle.remove(), or "
        "model.reset_hooks() for TransformerLens hooks) and attach it again afterwards.")


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The lock that serializes scope calls on one model (re-entrant: a scope may call another)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def first_non_finite_parameter(model: Any) -> Optional[str]:
    """Name of the first parameter holding NaN or infinity (None when all are finite)."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            return str(name)
    return None


def hook_count(model: Any) -> int:
    """Number of hooks attached to the model's hook points (for state checks)."""
    total = 0
    seen = set()
    for hook_point in model.hook_dict.values():
        if id(hook_point) in seen:
            continue
        seen.add(id(hook_point))
        total += len(getattr(hook_point, "fwd_hooks", [])) + len(getattr(hook_point, "bwd_hooks", []))
        total += len(getattr(hook_point, "_forward_hooks", {})) + len(
            getattr(hook_point, "_backward_hooks", {})
        )
    return total


def is_degenerate_norm(y: Float[Tensor, "... d_model"]) -> bool:
    """True when ‖y‖ equals √d_model, the signature of a folded (scale-free) final norm."""
    d = y.shape[-1]
    ratio = y.detach().float().norm(dim=-1) / math.sqrt(d)
    return bool(((ratio - 1).abs() < 1e-3).all())
