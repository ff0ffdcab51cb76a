"""Where inside the model a scope's influence travels (docs/method.md §3).

The probes that give token scores also give, from the same backward pass(es), the
sensitivity of y to the residual stream entering each block, each block's attention and
MLP output, and each attention head's output (``hook_z``, before ``W_O``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.hook_names import SITES, final_resid_hook, site_hooks



@dataclass
class InternalMaps:
    """Raw scores and activation norms of every internal site.

    Shapes: ``layer`` ``[n_layers + 1, pos]`` (the last row is the final residual stream),
    ``attn`` and ``mlp`` ``[n_layers, pos]``, ``head`` ``[n_layers, n_heads, pos]``.
    """

    scores: dict[str, Tensor]
    norms: dict[str, Tensor]


def assemble(n_layers: int, totals: dict[str, Tensor], activations: dict[str, Tensor]) -> InternalMaps:
    """Stack per-hook results (``[pos]`` or ``[pos, n_heads]``) into per-site maps."""
    scores: dict[str, Tensor] = {}
    norms: dict[str, Tensor] = {}
    for site in SITES:
        names = site_hooks(site, n_layers)
        if site == "layer":
            names.append(final_resid_hook(n_layers))
        # Each layer's tensors are on that layer's device (a model split over devices): gather on the CPU.
        s = torch.stack([totals[n].float().cpu() for n in names])
        a = torch.stack([activations[n][0].float().norm(dim=-1).cpu() for n in names])
        if site == "head":  # [L, pos, heads] -> [L, heads, pos]
            s, a = s.transpose(1, 2), a.transpose(1, 2)
        scores[site], norms[site] = s.contiguous(), a.contiguous()
    return InternalMaps(scores=scores, norms=norms)
