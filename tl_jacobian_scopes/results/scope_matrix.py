"""`ScopeMatrix`: one scope explained at many positions of one text (positions x tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .scope_result import ScopeResult


class ScopeMatrix:
    """Many explained positions of one prompt, computed with one shared forward pass.

    Row ``i`` is the :class:`ScopeResult` of ``positions[i]``; ``scores`` stacks them into a
    ``[n_positions, n_tokens]`` matrix (zero right of each explained position), the basis of
    translation-alignment and time-series views.

    Example:
        >>> m = tjs.fisher_scope(model, text, positions="all")  # doctest: +SKIP
        >>> m.scores.shape, m[3].top(2)  # doctest: +SKIP
    """

    def __init__(self, results: list[ScopeResult]):
        if not results:
            raise ValueError("A ScopeMatrix needs at least one result.")
        self.results = list(results)

    @property
    def scope(self) -> str:
        return self.results[0].scope

    @property
    def score_kind(self) -> str:
        return self.results[0].score_kind

    @property
    def str_tokens(self) -> list[str]:
        return self.results[0].str_tokens

    @property
    def positions(self) -> list[int]:
        return [r.position for r in self.results]

    @property
    def scores(self) -> Float[Tensor, "n_positions pos"]:
        return torch.stack([r.scores for r in self.results])

    @property
    def targets(self) -> list[str]:
        return [r.target_str for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> ScopeResult:
        return self.results[i]

    def __iter__(self) -> Iterator[ScopeResult]:
        return iter(self.results)

    def to_dataframe(self):
        """Long format: explained position, its target, then each token's position and score."""
        import pandas as pd

        rows = []
        for r in self.results:
            for t, (token, score) in enumerate(zip(r.str_tokens, r.scores.tolist())):
                rows.append({"scope": r.scope, "explained": r.position, "target": r.target_str,
                             "target_prob": r.target_prob, "position": t, "token": token, "score": score})
        return pd.DataFrame(rows)

    def show(self):
        """A positions x tokens heatmap and the per-position token colouring (offline)."""
        from ..views.html import matrix_view

        return matrix_view(self)

    def _repr_html_(self) -> str:
        return self.show()._repr_html_()

    def save_html(self, path: Union[str, Path]) -> Path:
        return self.show().save(path)

    def __repr__(self) -> str:
        return (f"ScopeMatrix(scope={self.scope!r}, n_positions={len(self)}, n_tokens={len(self.str_tokens)}, "
                f"positions={self.positions[:6]}{'...' if len(self) > 6 else ''})")
