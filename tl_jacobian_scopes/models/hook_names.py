"""Every TransformerLens hook name the package reads, perturbs or patches, in one place.

Both backends (3.x `HookedTransformer`, 3.x/4.x `TransformerBridge`) expose these names.
"""

from __future__ import annotations

#: The token embedding before positional embeddings are added: what the scopes perturb.
EMBED_HOOK = "hook_embed"
#: The final hidden state exactly as it enters the unembedding (``logits = y @ W_U + b_U``).
FINAL_HOOK = "unembed.hook_in"

#: Internal site name -> hook name pattern ({L} is the layer).
SITES = {
    "layer": "blocks.{L}.hook_resid_pre",
    "attn": "blocks.{L}.hook_attn_out",
    "mlp": "blocks.{L}.hook_mlp_out",
    "head": "blocks.{L}.attn.hook_z",
}


def site_hook(site: str, layer: int) -> str:
    """The hook name of an internal site at one layer, e.g. ``site_hook("head", 3)``."""
    return SITES[site].format(L=layer)


def site_hooks(site: str, n_layers: int) -> list[str]:
    """The hook names of an internal site at every layer, in layer order."""
    return [site_hook(site, L) for L in range(n_layers)]


def final_resid_hook(n_layers: int) -> str:
    """The residual stream after the last block (before the final norm)."""
    return f"blocks.{n_layers - 1}.hook_resid_post"


def internal_hook_names(n_layers: int) -> list[str]:
    """Every hook an internal map perturbs, in a fixed order."""
    names = [name for site in SITES for name in site_hooks(site, n_layers)]
    return names + [final_resid_hook(n_layers)]


def leaf_hook_names(n_layers: int, internals: bool) -> list[str]:
    """The hooks a scope perturbs: the embedding, and with ``internals`` every internal site."""
    return [EMBED_HOOK] + (internal_hook_names(n_layers) if internals else [])
