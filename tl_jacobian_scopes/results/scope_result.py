"""`ScopeResult`: one scope's token attributions and the prediction they explain."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: How each scope's score scales: norms are linear in the Jacobian, Fisher is quadratic.
SCORE_KINDS = {"semantic": "norm", "temperature": "norm", "fisher": "quadratic"}


class TokenScore(NamedTuple):
    """One row of :meth:`ScopeResult.top`."""

    position: int
    token: str
    score: float


@dataclass
class ScopeResult:
    """Token-level attributions of one Jacobian scope for one explained prediction.

    Attributes:
        scope: ``"semantic"``, ``"temperature"`` or ``"fisher"``.
        scores: One score per prompt token; zero after ``position`` (causality).
        tokens: Prompt token ids (BOS included when the model prepends one).
        str_tokens: Prompt tokens as strings.
        position: The explained position (the prediction of the token after it).
        target: Token whose logit the Semantic scope explains; for Temperature and
            Fisher, the model's top prediction at ``position``.
        target_str: ``target`` as a string.
        target_prob: Probability of ``target`` at ``position``.
        predicted: The model's top prediction at ``position``.
        predicted_str: ``predicted`` as a string.
        predicted_prob: Its probability.
        contrast: For a contrastive Semantic scope, the token subtracted (else None).
        contrast_str: ``contrast`` as a string.
        contrast_prob: Its probability.
        params: The scope's parameters (rank, probe count, ...) and diagnostics such as
            ``y_norm`` (the inverse temperature ‖y‖).
        model_name: Name of the model that produced the result.

    Example:
        >>> r = tjs.fisher_scope(model, "The capital of France is")  # doctest: +SKIP
        >>> r.top(3)  # doctest: +SKIP
        [TokenScore(position=4, token=' France', score=...), ...]
        >>> r.to_dataframe()  # doctest: +SKIP
    """

    scope: str
    scores: Float[Tensor, " pos"]
    tokens: Int[Tensor, " pos"]
    str_tokens: list[str]
    position: int
    target: int
    target_str: str
    target_prob: float
    predicted: int
    predicted_str: str
    predicted_prob: float
    contrast: Optional[int] = None
    contrast_str: Optional[str] = None
    contrast_prob: Optional[float] = None
    params: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""

    @property
    def score_kind(self) -> str:
        """``"norm"`` (Semantic, Temperature) or ``"quadratic"`` (Fisher): never one colour scale."""
        return SCORE_KINDS.get(self.scope, "norm")

    @property
    def n_tokens(self) -> int:
        return len(self.str_tokens)

    def top(self, k: int = 5) -> list[TokenScore]:
        """The ``k`` highest-scoring tokens, best first."""
        k = min(k, self.n_tokens)
        values, indices = torch.topk(self.scores.float(), k)
        return [TokenScore(int(i), self.str_tokens[int(i)], float(v)) for v, i in zip(values, indices)]

    def normalized(self) -> Float[Tensor, " pos"]:
        """Scores divided by their sum (a new tensor; ``scores`` is never modified)."""
        total = self.scores.sum()
        return self.scores / total if total > 0 else self.scores.clone()

    def to_dataframe(self):
        """One row per token: position, token, token_id, score, share, rank, explained."""
        import pandas as pd

        scores = self.scores.float().cpu()
        order = torch.argsort(scores, descending=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(1, len(order) + 1)
        return pd.DataFrame(
            {
                "scope": self.scope,
                "position": range(self.n_tokens),
                "token": self.str_tokens,
                "token_id": self.tokens.cpu().tolist(),
                "score": scores.tolist(),
                "share": self.normalized().float().cpu().tolist(),
                "rank": ranks.tolist(),
                "explained": [i == self.position for i in range(self.n_tokens)],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything in the result."""
        return {
            "scope": self.scope,
            "score_kind": self.score_kind,
            "model_name": self.model_name,
            "position": self.position,
            "target": self.target,
            "target_str": self.target_str,
            "target_prob": self.target_prob,
            "predicted": self.predicted,
            "predicted_str": self.predicted_str,
            "predicted_prob": self.predicted_prob,
            "contrast": self.contrast,
            "contrast_str": self.contrast_str,
            "contrast_prob": self.contrast_prob,
            "params": self.params,
            "tokens": self.tokens.cpu().tolist(),
            "str_tokens": self.str_tokens,
            "scores": self.scores.float().cpu().tolist(),
        }

    def save_json(self, path: Union[str, Path]) -> Path:
        """Write :meth:`to_dict` to ``path`` and return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScopeResult":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data.pop("score_kind", None)
        data["scores"] = torch.tensor(data["scores"], dtype=torch.float32)
        data["tokens"] = torch.tensor(data["tokens"], dtype=torch.long)
        return cls(**data)

    def __repr__(self) -> str:
        best = ", ".join(f"{t.token!r}:{t.score:.3g}" for t in self.top(3))
        what = f"{self.target_str!r}"
        if self.contrast_str is not None:
            what += f" vs {self.contrast_str!r}"
        return (
            f"ScopeResult(scope={self.scope!r}, n_tokens={self.n_tokens}, position={self.position}, "
            f"target={what} p={self.target_prob:.3f}, top=[{best}])"
        )
