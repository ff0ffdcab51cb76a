"""The self-check: the library's next-token distribution is the model's own (docs/method.md §1.1).

The scopes never run the unembedding inside the model: they read ``y`` at ``unembed.hook_in``
and compute ``p = softmax(g(y @ W_U + b_U))`` themselves, with the output transform ``g`` that
TransformerLens declares (:mod:`..models.readout`). The first scope call on a model checks that
this ``p``, with ``y`` from the call's own forward pass (its attention kernel), equals the
model's own output at the explained position of the call's first prompt: the wrapped Hugging Face
model's logits on a bridge (its forward pass run with the bridge components swapped back for the
HF modules they wrap; not when TransformerLens hooks are attached), else ``model(tokens)``.
The verdict is kept per model and kernel (weakly: it dies with the model) and redone when the
unembedding's weights or the declared transform change. A mismatch (a transform TransformerLens
does not declare, a hook that edits the logits, a bridge forward pass that differs from the HF
model's) raises :class:`~..errors.OutputMismatchError`; :func:`skip_output_check` is the opt-out.
"""

from __future__ import annotations

import weakref
from typing import Any, Hashable, Optional

import torch
from torch import Tensor

from ..errors import OutputMismatchError
from ..models.access import ModelAccess, has_user_hooks, hook_count
from ..models.hook_names import FINAL_HOOK
from . import probes as P
from .engine import forward_to_final_hidden, model_family, run_model, unembed_hooked

#: Largest total-variation distance ``½ Σ|p_lib - p_model|`` accepted, by the model's dtype: the
#: model rounds its logits to its dtype (bf16 keeps ~3 significant digits), the library works in float32.
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}

#: Per model: (key, the attention kernels whose ``y`` passed).
_VERDICTS: "weakref.WeakKeyDictionary[Any, tuple[Hashable, frozenset[str]]]" = weakref.WeakKeyDictionary()
_SKIPPED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def skip_output_check(model: Any, skip: bool = True) -> None:
    """Turn the self-check of the model's output off (``skip=False``: on again) for ``model``.

    Every scope call on a model first checks (once, then the verdict is cached) that the
    probabilities the library computes from ``y`` equal the model's own output, and raises
    :class:`~tl_jacobian_scopes.OutputMismatchError` when they differ. Skipping it means the
    scopes explain ``softmax(g(y @ W_U + b_U))`` with the transform ``g`` TransformerLens
    declares, whatever the model's forward pass returns: use it only when you know why they
    differ (e.g. a hook that edits the logits on purpose).

    Example:
        >>> tjs.skip_output_check(model)  # not run: it would turn the check off for the shared model  # doctest: +SKIP
    """
    if skip:
        _SKIPPED.add(model)
    else:
        _SKIPPED.discard(model)
    _VERDICTS.pop(model, None)


def _version(t: Optional[Tensor]) -> Hashable:
    if t is None:
        return None
    # Inference tensors keep no version counter (frozen() refuses such a model with its own message).
    return (t.data_ptr(), None if t.is_inference() else t._version, tuple(t.shape), t.dtype, str(t.device))


def _key(access: ModelAccess) -> Hashable:
    transform = access.logit_transform
    return (_version(access.W_U), _version(access.b_U), transform.describe(), transform.values, transform.source,
            id(getattr(access.model, "original_model", None)))


def check_model_output(access: ModelAccess, tokens: Tensor, position: int, kernel: str = "eager") -> None:
    """Raise :class:`OutputMismatchError` unless the library's ``p`` at ``position`` of ``tokens``
    (one prompt, 1-D), from ``y`` as the call's forward pass computes it (``kernel``: its attention
    kernel), equals the model's own; a no-op once a model has passed (module docstring).

    The model's own output is the wrapped Hugging Face model's on a bridge (when it can run
    unwrapped and no TransformerLens hook is attached), else ``model(tokens)``.
    """
    model = access.model
    if model in _SKIPPED:
        return
    # A hook on the unembedding may edit the logits at any call: checked every call, against
    # model(tokens) (the wrapped HF model would miss a hook on the bridge's own unembed), never cached.
    # A one-token prefix cannot show a fault inside attention: its pass is not kept either.
    hooked = unembed_hooked(access)
    every_call = hooked or position == 0
    key = _key(access)
    cached = _VERDICTS.get(model)
    passed: set[str] = set(cached[1]) if cached is not None and cached[0] == key else set()
    if kernel in passed and not every_call:
        return
    # A bridge that can run SDPA is checked on the eager path too, at once: a later call with
    # internal maps or a user's attention hook (eager) then needs no forward pass of its own.
    kernels = [kernel] + (["eager"] if kernel == "sdpa" else [])
    # Causal: the tokens after the explained position cannot change its prediction.
    tokens = tokens.reshape(-1)[: position + 1]
    row = tokens.reshape(1, -1).to(access.input_device)
    with access.frozen(), torch.no_grad():
        ys = {k: forward_to_final_hidden(access, row, perturb=(), kernel=k).y[0, position].detach() for k in kernels}
        reference = None if hooked else _wrapped_model_logits(access, tokens)
        source = "the wrapped Hugging Face model"
        if reference is None:
            reference, source = run_model(access, row), "the model's forward pass"
        if not isinstance(reference, Tensor):
            return  # not a logits-returning forward (nothing to compare): the scopes' own checks apply
        own = reference[0, position].detach().double()
        if not (all(bool(torch.isfinite(y).all()) for y in ys.values()) and bool(torch.isfinite(own).all())):
            return  # NaN or infinity: the scope's own check names the parameter (nothing is cached)
        p_model = torch.softmax(own, dim=-1)
        failure = None
        for k, y in ys.items():
            z, _ = P.output_at(y, access.W_U, access.b_U, access.logit_transform)
            z = z.double()
            p_lib = torch.softmax(z, dim=-1)
            distance = float(0.5 * (p_lib - p_model.to(z.device)).abs().sum())
            if distance <= TOLERANCE.get(access.dtype, 1e-4):
                passed.add(k)
            elif k == kernel:
                failure = (z, p_lib, distance)
        if failure is not None:
            z, p_lib, distance = failure
            own, p_model = own.to(z.device), p_model.to(z.device)
            bridge_own = None
            if source != "the model's forward pass":  # does the bridge's own forward agree with HF?
                logits = run_model(access, row)
                if isinstance(logits, Tensor):
                    bridge_own = torch.softmax(logits[0, position].double().to(z.device), dim=-1)
            raise OutputMismatchError(_message(access, position, z, own, p_lib, p_model, distance, source,
                                               bridge_own, kernel))
    if not every_call:
        _VERDICTS[model] = (key, frozenset(passed))


def _wrapped_model_logits(access: ModelAccess, tokens: Tensor) -> Optional[Tensor]:
    """The wrapped Hugging Face model's own logits, on a bridge: its forward pass with every bridge
    component swapped back for the HF module it wraps (restored afterwards). None on a
    HookedTransformer, when hooks are attached (they would change the bridge's output on purpose),
    when the bridge processed its weights (the HF modules keep the raw ones), or when the unwrapped
    model cannot run (then only the bridge's own output is checked)."""
    root = getattr(access.model, "original_model", None)
    if (access.backend != "bridge" or not isinstance(root, torch.nn.Module) or hook_count(access.model)
            or getattr(access.model, "_weights_processed", False)):  # processed weights live in the bridge
        return None
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    stack, seen = [root], set()
    try:
        while stack:
            module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name, child in list(module._modules.items()):
                if child is None:
                    continue
                inner = child._modules.get("_original_component") or child._modules.get("original_component")
                if has_user_hooks(child) or isinstance(inner, torch.nn.Module) and has_user_hooks(inner):
                    # A torch hook on a bridge component or an HF module: whether model(tokens) runs
                    # it depends on the bridge's path, so only model(tokens) itself is the reference.
                    return None
                if isinstance(inner, torch.nn.Module) and inner is not child:
                    swaps.append((module, name, child))
                    module._modules[name] = inner  # not setattr: a bridge's __setattr__ forwards it
                    child = inner
                stack.append(child)
        out = root(input_ids=tokens.reshape(1, -1).to(access.input_device))
        logits = getattr(out, "logits", None)
        return logits.detach() if isinstance(logits, Tensor) else None
    except Exception:  # an unwrapped model that cannot run alone: nothing to compare with
        return None
    finally:
        for module, name, child in reversed(swaps):
            module._modules[name] = child


def _message(access: ModelAccess, position: int, z: Tensor, own: Tensor, p_lib: Tensor, p_model: Tensor,
             distance: float, source: str, bridge_own: Optional[Tensor], kernel: str) -> str:
    top = int(p_model.argmax())
    # Is the model's output an affine function of the library's logits (an undeclared scale)?
    zc, oc = z - z.mean(), own - own.mean()
    ratio = float((zc @ oc) / (zc @ zc).clamp_min(1e-30))
    affine = float((oc - ratio * zc).norm() / oc.norm().clamp_min(1e-30)) < 1e-3
    shape = (f" The model's logits are {ratio:.4g}× the library's (plus a constant): a logit scale "
             "that TransformerLens does not declare?" if affine and abs(ratio - 1) > 1e-3 else "")
    if bridge_own is not None and float(0.5 * (bridge_own - p_lib).abs().sum()) <= TOLERANCE.get(access.dtype, 1e-4):
        shape += (f" The bridge's own forward pass agrees with the library, not with the HF model: TransformerLens's "
                  f"bridge computes a different function from the model it wraps ({kernel} attention).")
    family = model_family(access)
    return (
        f"The model's own next-token distribution differs from the one the scopes compute ({family}, "
        f"{access.backend}): at position {position} of the first prompt, total variation {distance:.3g}; "
        f"p(top token {top}) is {float(p_model[top]):.4g} in {source} but "
        f"{float(p_lib[top]):.4g} from y ('{FINAL_HOOK}') with the declared output transform "
        f"({access.logit_transform.describe()}, read from {access.logit_transform.source}).{shape} "
        "The scopes would report probabilities and gradients of a function the model does not compute. "
        "Causes: a hook that changes the logits after the unembedding (remove it), an output transform "
        "TransformerLens does not declare for this family (upgrade TransformerLens or report the family), "
        "or a TransformerLens forward pass that differs from the Hugging Face model's (try another "
        "TransformerLens version or backend, or token-level scopes without internals=True). To run the "
        "scopes on the library's definition anyway, call tjs.skip_output_check(model) (docs/method.md §1.1)."
    )
