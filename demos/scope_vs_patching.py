"""Contrastive Semantic Scope next to real activation patching, on the embedded default model.

For each clean/corrupted pair: the scope's layer x position map (sensitivity of the logit
difference answer - wrong to each residual-stream cell, one backward pass), the same
gradient dotted with the clean-minus-corrupted activations (``tjs.patching.attribution_patching_map``,
one backward pass), and real residual-stream patching (fraction of the logit difference
restored by patching that cell from the clean run, one forward pass per cell), with Spearman
correlations (average ranks for ties) over the cells patching can move (from the first
differing token on; earlier cells are exactly 0) and over all cells; then what patching the top heads restores (``tjs.patching.patch_top``), ranked by
head-level attribution patching (its default), by the scope's raw head map, or by its scaled head map.

Writes ``docs/images/scope_vs_patching.png``.

Usage: python demos/scope_vs_patching.py
"""

import warnings
from pathlib import Path

from matplotlib.figure import Figure  # a bare Figure draws itself: no pyplot, no backend switch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.evaluation.patching import movable_cells, residual_patching_map, spearman

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "scope_vs_patching.png"
PAIRS = [
    ("The capital of France is", "The capital of Italy is", " Paris", " Rome"),
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
]


def main() -> None:
    model = tjs.load_default_model(device="cpu")
    fig = Figure(figsize=(16, 4.6 * len(PAIRS)), layout="constrained")
    for subfig, (clean, corrupted, answer, wrong) in zip(fig.subfigures(len(PAIRS), 1), PAIRS):
        scope = tjs.semantic_scope(model, clean, target=answer, contrast=wrong, internals=True)
        patched = residual_patching_map(model, clean, corrupted, answer, wrong)
        estimate = tjs.patching.attribution_patching_map(model, clean, corrupted, answer, wrong)
        sensitivity = scope.internal("layer")[:-1]
        mask = movable_cells(model, clean, corrupted)
        rho, rho_estimate = spearman(sensitivity, patched, mask=mask), spearman(estimate, patched, mask=mask)
        rho_all, rho_estimate_all = spearman(sensitivity, patched), spearman(estimate, patched)
        labels = [repr(t)[1:-1] for t in scope.str_tokens]
        span = float(max(patched.values.abs().max(), estimate.values.abs().max()))
        panels = [
            (sensitivity, dict(cmap="Blues", vmin=0, vmax=float(sensitivity.quantile(0.99))),
             f"Semantic Scope ({answer!r} − {wrong!r}), raw ‖J^T v‖: ρ = {rho:.2f}"),
            (estimate.values, dict(cmap="RdBu_r", vmin=-span, vmax=span),
             f"scope gradient · (clean − corrupted) / ΔLD: ρ = {rho_estimate:.2f}"),
            (patched.values, dict(cmap="RdBu_r", vmin=-span, vmax=span), "real residual patching: fraction restored"),
        ]
        for ax, (grid, style, title) in zip(subfig.subplots(1, 3), panels):
            im = ax.imshow(grid.numpy(), aspect="auto", interpolation="nearest", **style)
            ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
            ax.set_ylabel("layer (resid_pre)")
            ax.set_title(title, fontsize=9)
            subfig.colorbar(im, ax=ax, shrink=0.8)
        subfig.suptitle(f"clean {clean!r} → corrupted {corrupted!r}   "
                        f"(ρ: Spearman with real patching over the cells it can move)", fontsize=10)
        print(f"{clean!r}: Spearman with residual patching, movable cells (all cells): "
              f"sensitivity map {rho:.2f} ({rho_all:.2f}), attribution patching {rho_estimate:.2f} ({rho_estimate_all:.2f})")
        head_estimate = tjs.patching.attribution_patching_map(model, clean, corrupted, answer, wrong, site="head")
        print(f"  {head_estimate!r}")
        for k in (1, 3, 5):
            guided = tjs.patching.patch_top(model, clean, corrupted, scope, k=k, site="head")  # ranks by attribution patching
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", tjs.patching.RawSensitivityWarning)  # shown here on purpose
                raw = tjs.patching.patch_top(model, clean, corrupted, scope, k=k, site="head", rank_by="scope")
                scaled = tjs.patching.patch_top(model, clean, corrupted, scope.aggregate(scope.internal("head", "scaled")),
                                       k=k, answer=answer, wrong=wrong)
            print(f"  top-{k} heads by attribution patching {guided.labels} restore {guided.recovered:+.0%}; "
                  f"by the raw scope head map {raw.labels} {raw.recovered:+.0%}; "
                  f"by the scaled head map {scaled.labels} {scaled.recovered:+.0%}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
