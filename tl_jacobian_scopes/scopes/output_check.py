"""The self-check: the library's next-token distribution is the model's own (docs/method.md §1.1).

The scopes never run the unembedding inside the model: they read ``y`` at ``unembed.hook_in``
and compute ``p = softmax(g(y @ W_U + b_U))`` themselves, with the output transform ``g`` that
TransformerLens declares (:mod:`..models.readout`). The first scope call on a model checks
that this ``p`` equals ``softmax`` of the logits the model's own forward pass returns, at the
explained position of the call's first prompt (one extra forward pass, without gradients).
The verdict is kept per model (weakly: it dies with the model) and redone when the unembedding's
weights, the declared transform or the model's dtype change. A mismatch (a transform
TransformerLens does not declare, or one injected by a hook after the unembedding) raises
:class:`~..errors.OutputMismatchError`; :func:`skip_output_check` is the explicit opt-out.
"""

from __future__ import annotations

import weakref
from typing import Any, Hashable, Optional

import torch
from torch import Tensor

from ..errors import OutputMismatchError
from ..models.access import ModelAccess
from ..models.hook_names import FINAL_HOOK
from . import probes as P
from .engine import model_family, run_model

#: Largest total-variation distance ``½ Σ|p_lib - p_model|`` accepted, by the model's dtype: the
#: model rounds its logits to its dtype (bf16 keeps ~3 significant digits), the library works in float32.
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}

_VERDICTS: "weakref.WeakKeyDictionary[Any, Hashable]" = weakref.WeakKeyDictionary()
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
        >>> tjs.skip_output_check(model)  # doctest: +SKIP
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
    return (_version(access.W_U), _version(access.b_U), transform.describe(), transform.source,
            id(getattr(access.model, "original_model", None)))


def check_model_output(access: ModelAccess, tokens: Tensor, position: int) -> None:
    """Raise :class:`OutputMismatchError` unless the library's ``p`` at ``position`` of ``tokens``
    (one prompt, 1-D) equals the model's own; a no-op once a model has passed (module docstring)."""
    model = access.model
    if model in _SKIPPED:
        return
    key = _key(access)
    if _VERDICTS.get(model) == key:
        return
    captured: dict[str, Tensor] = {}

    def capture(act: Tensor, hook: Any) -> None:
        captured["y"] = act[0, position].detach()

    with access.frozen(), torch.no_grad():
        with model.hooks(fwd_hooks=[(FINAL_HOOK, capture)]):
            logits = run_model(access, tokens.reshape(1, -1).to(access.input_device))
        if not isinstance(logits, Tensor) or "y" not in captured:
            return  # not a logits-returning forward (nothing to compare): the scopes' own checks apply
        if not (bool(torch.isfinite(captured["y"]).all()) and bool(torch.isfinite(logits[0, position]).all())):
            return  # NaN or infinity: the scope's own check names the parameter (nothing is cached)
        z, _ = P.output_at(captured["y"], access.W_U, access.b_U, access.logit_transform)
        z = z.double()
        p_lib = torch.softmax(z, dim=-1)
        own = logits[0, position].detach().double().to(p_lib.device)
        p_model = torch.softmax(own, dim=-1)
        distance = float(0.5 * (p_lib - p_model).abs().sum())
    if distance <= TOLERANCE.get(access.dtype, 1e-4):
        _VERDICTS[model] = key
        return
    raise OutputMismatchError(_message(access, position, z, own, p_lib, p_model, distance))


def _message(access: ModelAccess, position: int, z: Tensor, own: Tensor, p_lib: Tensor, p_model: Tensor,
             distance: float) -> str:
    top = int(p_model.argmax())
    # Is the model's output an affine function of the library's logits (an undeclared scale)?
    zc, oc = z - z.mean(), own - own.mean()
    ratio = float((zc @ oc) / (zc @ zc).clamp_min(1e-30))
    affine = float((oc - ratio * zc).norm() / oc.norm().clamp_min(1e-30)) < 1e-3
    shape = (f" The model's logits are {ratio:.4g}× the library's (plus a constant): a logit scale "
             "that TransformerLens does not declare?" if affine and abs(ratio - 1) > 1e-3 else "")
    family = model_family(access)
    return (
        f"The model's own next-token distribution differs from the one the scopes compute ({family}, "
        f"{access.backend}): at position {position} of the first prompt, total variation {distance:.3g}; "
        f"p(top token {top}) is {float(p_model[top]):.4g} in the model's forward pass but "
        f"{float(p_lib[top]):.4g} from y ('{FINAL_HOOK}') with the declared output transform "
        f"({access.logit_transform.describe()}, read from {access.logit_transform.source}).{shape} "
        "The scopes would report probabilities and gradients of a function the model does not compute. "
        "Causes: a hook that changes the logits after the unembedding (remove it), an output transform "
        "TransformerLens does not declare for this family (upgrade TransformerLens or report the family), "
        "or a TransformerLens forward pass that differs from the Hugging Face model's. To run the scopes "
        "on the library's definition anyway, call tjs.skip_output_check(model) (docs/method.md §1.1)."
    )
