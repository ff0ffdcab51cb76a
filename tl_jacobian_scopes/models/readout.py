"""The model's output map ``z = g(u)``, ``u = y @ W_U + b_U`` (docs/method.md §1.1).

Several architectures transform the logits after the unembedding: Gemma-2/VaultGemma/Gemma-4
soft-cap them (``c·tanh(u/c)``), Cohere multiplies them by ``logit_scale``, Granite divides them
by ``logits_scaling``, FalconH1 multiplies them by ``lm_head_multiplier``. The transform is read
from TransformerLens, never from a list of architecture names:

- a ``TransformerBridge``: its adapter's ``apply_output_logits_transform`` (TransformerLens 3.9
  and 4.x), which reproduces the wrapped model's post-unembedding path;
- a ``HookedTransformer``: ``cfg.output_logits_soft_cap`` (the only transform its forward applies).

The transform is classified once per call on a few probe values: the identity (nothing extra
runs), an elementwise scale ``s·u`` (folded into the probes as a number), or a general
elementwise map, whose derivative ``g'(u)`` is taken by autograd at each explained position.
A transform TransformerLens does not declare is caught by :mod:`.output_check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor

from ..errors import ArchitectureError

#: ``g'(u)``: None for the identity, a number for a constant scale, else a tensor ``[..., V]``.
Slope = Union[None, float, Tensor]

#: Probe values that tell the identity, a scale and a non-linear map apart (a soft-cap at any
#: cap below ~10⁴ bends the largest of them).
_PROBE = (-3.0e4, -300.0, -40.0, -7.0, -1.0, -0.25, 0.0, 0.5, 2.0, 9.0, 35.0, 250.0, 3.0e4)


def _softcap(cap: float) -> Callable[[Tensor], Tensor]:
    def transform(u: Tensor) -> Tensor:
        return cap * torch.tanh(u / cap)
    return transform


@dataclass(frozen=True)
class LogitTransform:
    """An elementwise ``g`` with ``z = g(u)``.

    Attributes:
        kind: ``"identity"``, ``"scale"`` (``g(u) = scale·u``) or ``"elementwise"`` (``fn``).
        scale: The factor of a ``"scale"`` transform.
        fn: The transform itself, for ``"elementwise"``.
        source: Where it was read (for messages and ``params``).
    """

    kind: Literal["identity", "scale", "elementwise"] = "identity"
    scale: float = 1.0
    fn: Optional[Callable[[Tensor], Tensor]] = None
    source: str = "none"
    #: ``g`` at the probe values (``"elementwise"``): tells two soft-caps apart in the self-check's cache.
    values: tuple[float, ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.kind == "identity"

    def describe(self) -> str:
        """A short stable description, e.g. ``"identity"``, ``"scale(0.0625)"``, ``"elementwise"``."""
        if self.kind == "scale":
            return f"scale({self.scale:.6g})"
        return self.kind

    def apply(self, u: Tensor, need_slope: bool = False) -> tuple[Tensor, Slope]:
        """``(z, g'(u))`` for float32 logits ``u`` (``g'`` is None unless ``need_slope``, or
        for the identity)."""
        if self.kind == "identity":
            return u, None
        if self.kind == "scale":
            return u * self.scale, self.scale
        assert self.fn is not None
        if not need_slope:
            with torch.no_grad():
                return self.fn(u.detach()).float(), None
        with torch.enable_grad():
            leaf = u.detach().requires_grad_(True)
            z = self.fn(leaf)
            (slope,) = torch.autograd.grad(z.sum(), leaf)
        return z.detach().float(), slope.detach().float()


IDENTITY = LogitTransform()


def _classify(fn: Callable[[Tensor], Tensor], source: str) -> LogitTransform:
    """Identity, scale or general elementwise, from the transform's values at :data:`_PROBE`."""
    u = torch.tensor(_PROBE, dtype=torch.float32)
    with torch.no_grad():
        z = fn(u.clone())
        if not isinstance(z, Tensor) or z.shape != u.shape:
            raise ArchitectureError(
                f"The model's output-logits transform ({source}) does not map logits elementwise "
                "(it changed their shape): the scopes cannot follow it. Report the family to "
                "TransformerLens, or explain the raw logits with a model that has no such transform.")
        z = z.float()
        if torch.equal(z, u):
            return IDENTITY
        scale = float(z[8] / u[8])  # u = 2
        if scale != 0.0 and torch.allclose(z, scale * u, rtol=1e-6, atol=0.0):
            return LogitTransform("scale", scale=scale, source=source)
        flipped = fn(u.flip(0).clone()).float().flip(0)
        part = fn(u[3:9].clone()).float()  # a logit's value may not depend on the others, nor on V
    if not (torch.allclose(flipped, z, rtol=1e-6, atol=1e-6) and part.shape == z[3:9].shape
            and torch.allclose(part, z[3:9], rtol=1e-6, atol=1e-6)):
        raise ArchitectureError(
            f"The model's output-logits transform ({source}) is not elementwise (a logit's value "
            "depends on the others): the scopes cannot follow it.")
    return LogitTransform("elementwise", fn=fn, source=source, values=tuple(z.tolist()))


def read_logit_transform(model: Any, backend: str) -> LogitTransform:
    """The post-unembedding transform TransformerLens declares for ``model``."""
    adapter = getattr(model, "adapter", None) if backend == "bridge" else None
    fn = getattr(adapter, "apply_output_logits_transform", None)
    if callable(fn):
        return _classify(fn, f"{type(adapter).__name__}.apply_output_logits_transform")
    cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", None)
    if isinstance(cap, (int, float)) and cap > 0:
        return _classify(_softcap(float(cap)), f"cfg.output_logits_soft_cap={cap:g}")
    return IDENTITY


def slope_row(slope: Slope, i: int) -> Slope:
    """Job ``i``'s slope from a batch's (a number or None is shared by every job)."""
    return slope[i] if isinstance(slope, Tensor) else slope
