"""`ScopeMatrix`: one scope explained at many positions of one text (positions x tokens)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ..views.page import ScopeView

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import DataFileError, ScopeError
from .base import ResultRows, ViewableResult
from .files import SavedAsJson, file_header, strip_header
from .scope_result import ScopeResult


class ScopeMatrix(ResultRows[ScopeResult], ViewableResult, SavedAsJson):
    """Many explained positions of one prompt, computed with one shared forward pass.

    Row ``i`` is the :class:`ScopeResult` of ``positions[i]``; ``scores`` stacks them into a
    ``[n_positions, n_tokens]`` matrix (zero right of each explained position), the basis of
    translation-alignment and time-series views.

    Examples:
        >>> text = "The capital of France is Paris"
        >>> m = tjs.fisher_scope(model, text, positions="all")
        >>> tuple(m.scores.shape)
        (7, 7)
        >>> best = m[3].top(2)
    """

    def __init__(self, results: list[ScopeResult]):
        results = list(results)
        if not results:
            raise ScopeError("A ScopeMatrix needs at least one result: pass positions that exist in the prompt.")
        if any(r.str_tokens != results[0].str_tokens for r in results):
            raise ScopeError("A ScopeMatrix needs results over the same tokens (one prompt, one model).")
        kinds = sorted({r.score_kind for r in results})
        if len(kinds) > 1:
            # Its views put every row on one colour scale, and score_kind is read from the first row.
            raise ScopeError(f"A ScopeMatrix needs results of one score kind (one method), got {kinds}.")
        self.results = results

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

    def _rows(self) -> list[ScopeResult]:
        return self.results

    def to_dataframe(self) -> "pd.DataFrame":
        """Long format: explained position, its target, then each token's position and score."""
        import pandas as pd

        rows = []
        for r in self.results:
            for t, (token, score) in enumerate(zip(r.str_tokens, r.scores.tolist())):
                rows.append({"scope": r.scope, "explained": r.position, "target": r.target_str,
                             "target_prob": r.target_prob, "position": t, "token": token, "score": score})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the file header (``"kind": "ScopeMatrix"``), then ``"results"``."""
        return {**file_header("ScopeMatrix"), "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScopeMatrix":
        """Inverse of :meth:`to_dict` (also reads files of older versions, ``"kind": "scope_matrix"``)."""
        is_matrix = isinstance(data, dict) and data.get("kind") in ("ScopeMatrix", "scope_matrix")
        rows = strip_header(data, "ScopeMatrix", accepted=("scope_matrix",)).get("results") if is_matrix else None
        if not isinstance(rows, list):
            raise DataFileError(
                "A ScopeMatrix dict has kind 'ScopeMatrix' and a list of results; "
                "write it with ScopeMatrix.save_json() (a single result loads with ScopeResult.load_json())."
            )
        results = [ScopeResult.from_dict(r) for r in rows]
        try:
            return cls(results)
        except ScopeError as exc:  # rows that are each valid but do not make one matrix
            raise DataFileError(f"{exc} Write it with ScopeMatrix.save_json() and do not edit its structure.") from exc

    def show(self) -> "ScopeView":
        """A positions x tokens heatmap and the per-position token colouring (offline)."""
        from ..views.html import matrix_view

        return matrix_view(self)


    def __repr__(self) -> str:
        return (f"ScopeMatrix(scope={self.scope!r}, n_positions={len(self)}, n_tokens={len(self.str_tokens)}, "
                f"positions={self.positions[:6]}{'...' if len(self) > 6 else ''})")
