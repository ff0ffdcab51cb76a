"""Synthetic ScopeResults (no model): any strings, any values, internal maps included."""

import torch

import tl_jacobian_scopes as tjs

N_LAYERS, N_HEADS = 2, 3


def result_dict(tokens, /, scope="semantic", **fields):
    """A ``ScopeResult.to_dict()``-shaped dict with internal maps over ``tokens``; ``fields`` override any entry."""
    str_tokens, n = list(tokens), len(tokens)
    position = fields.get("position", n - 1)
    position = position if isinstance(position, int) else n - 1
    ramp = torch.linspace(0.1, 1.0, n)
    scores = torch.where(torch.arange(n) <= position, ramp, torch.zeros(n))
    grid = lambda *shape: (torch.arange(1, 1 + torch.Size(shape).numel()).reshape(shape) / 10.0).tolist()  # noqa: E731
    data = {
        "scope": scope, "model_name": "synthetic", "position": position,
        "target": 7, "target_str": " dog", "target_prob": 0.25,
        "predicted": 8, "predicted_str": " cat", "predicted_prob": 0.5,
        "contrast": 9, "contrast_str": " mat", "contrast_prob": 0.125,
        "params": {"rank": 4, "y_norm": 12.5},
        "tokens": list(range(n)), "str_tokens": list(str_tokens), "scores": scores.tolist(),
        "layer_scores": grid(N_LAYERS + 1, n), "attn_scores": grid(N_LAYERS, n), "mlp_scores": grid(N_LAYERS, n),
        "head_scores": grid(N_LAYERS, N_HEADS, n),
        "internal_norms": {"layer": grid(N_LAYERS + 1, n), "attn": grid(N_LAYERS, n), "mlp": grid(N_LAYERS, n),
                           "head": grid(N_LAYERS, N_HEADS, n)},
        "stderr": None,
        "score_kind": "quadratic" if scope == "fisher" else "norm",
    }
    data.update(fields)
    return data


def make_result(tokens=("the", " cat", " sat", " on", " the", " mat"), /, **fields) -> tjs.results.ScopeResult:
    return tjs.results.ScopeResult.from_dict(result_dict(tokens, **fields))


def make_patching(values, site="head", clean=("a", " b", " c"), corrupted=None):
    rows, cols = values.shape
    col_labels = [f"H{h}" for h in range(cols)] if site == "head" else [f"{i}:{t}" for i, t in enumerate(clean)][:cols]
    return tjs.patching.PatchingResult(
        values=values, metric="m", method="activation patching", site=site,
        row_labels=[f"L{i}" for i in range(rows)], col_labels=col_labels, clean_str_tokens=list(clean),
        corrupted_str_tokens=list(corrupted if corrupted is not None else clean), answer_str=" x", wrong_str=" y",
        ld_clean=2.0, ld_corrupted=-1.0)
