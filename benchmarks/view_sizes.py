"""How many bytes each view adds to a notebook (issue 11): first and later displays, saved files.

Run from the repository root: ``OMP_NUM_THREADS=1 python benchmarks/view_sizes.py``.
Results come from the embedded default model (SmolLM2-135M-Instruct, CPU) over prompts of
100 and 134 tokens; "internals, 30x9" is a synthetic result with that model's shape (30 layers
x 9 heads) and random scores (size depends on shape, not on values), "internals, tiny" comes
from a tiny random model (tests/tiny_models.py) at its full 32-token context.
"""

from __future__ import annotations

import platform
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tl_jacobian_scopes as tjs  # noqa: E402
from tl_jacobian_scopes.views import html as views_html  # noqa: E402
from tiny_models import WORDS, tiny_model  # noqa: E402


TEXT = ("Jacobian scopes explain which input tokens drive a prediction. The cat sat on the mat while "
        "the dog ran to the house, and the capital of France is Paris, which lies on the river Seine. ") * 8


def prompt(model: object, n_tokens: int) -> torch.Tensor:
    """Exactly ``n_tokens`` token ids (BOS included)."""
    return model.to_tokens(TEXT)[0, :n_tokens]  # type: ignore[attr-defined]


def synthetic_internals(n_tokens: int, n_layers: int = 30, n_heads: int = 9) -> tjs.results.ScopeResult:
    g = torch.Generator().manual_seed(0)
    causal = torch.ones(n_tokens)
    rand = lambda *shape: (torch.rand(*shape, generator=g) * causal).tolist()  # noqa: E731
    return tjs.results.ScopeResult.from_dict({
        "scope": "fisher", "model_name": "synthetic-30x9", "position": n_tokens - 1,
        "target": 1, "target_str": " a", "target_prob": 0.1, "predicted": 1, "predicted_str": " a",
        "predicted_prob": 0.1, "tokens": list(range(n_tokens)), "str_tokens": [f" w{i}" for i in range(n_tokens)],
        "scores": rand(n_tokens), "layer_scores": rand(n_layers + 1, n_tokens), "attn_scores": rand(n_layers, n_tokens),
        "mlp_scores": rand(n_layers, n_tokens), "head_scores": rand(n_layers, n_heads, n_tokens),
        "internal_norms": {"layer": rand(n_layers + 1, n_tokens), "attn": rand(n_layers, n_tokens),
                           "mlp": rand(n_layers, n_tokens), "head": rand(n_layers, n_heads, n_tokens)},
    })


def later_display(view: object) -> int:
    """Bytes of a display after the first one in this kernel session."""
    html = view._repr_html_()  # type: ignore[attr-defined]
    return len(html.encode("utf-8"))


def main() -> None:
    print(f"# view sizes · tl_jacobian_scopes {tjs.__version__} · Python {platform.python_version()} · "
          f"torch {torch.__version__} · {platform.platform()}")
    model = tjs.load_default_model(device="cpu")
    p100, p134 = prompt(model, 100), prompt(model, 134)
    token_view = tjs.semantic_scope(model, p100, target=" the")
    views_html._notebook["bundle_sent"] = False  # as in a fresh kernel
    first = len(token_view._repr_html_().encode("utf-8"))
    rows = [("first display (token view, 100 tokens)", first)]
    rows.append(("second display (token view, 100 tokens)", later_display(token_view)))
    tiny, _ = tiny_model("llama", "bridge")
    tiny_prompt = " ".join(random.Random(0).choice(WORDS) for _ in range(31))
    rows.append(("internals view, tiny model (2 layers x 4 heads), 32 tokens",
                 later_display(tjs.fisher_scope(tiny, tiny_prompt, internals=True))))
    rows.append(("internals view, 30 layers x 9 heads, 100 tokens", later_display(synthetic_internals(100))))
    rows.append(("comparison of 3 scopes, 100 tokens", later_display(tjs.compare(
        token_view, tjs.fisher_scope(model, p100), tjs.temperature_scope(model, p100)))))
    rows.append(("matrix view, positions='all', 100 tokens",
                 later_display(tjs.semantic_scope(model, p100, positions="all", target="next"))))
    matrix134 = tjs.semantic_scope(model, p134, positions="all", target="next")
    rows.append(("matrix view, positions='all', 134 tokens", later_display(matrix134)))
    bundle = len(views_html.circuitsvis_bundle().encode("utf-8"))
    rows.append(("standalone file, token view (ScopeView.to_html)", len(token_view.show().to_html().encode("utf-8"))))
    rows.append(("standalone file, matrix view at 134 tokens", len(matrix134.show().to_html().encode("utf-8"))))
    rows.append(("  each holds one CircuitsVis bundle of", bundle))
    for name, size in rows:
        print(f"{name:<60} {size / 1000:>9.1f} KB")


if __name__ == "__main__":
    main()
