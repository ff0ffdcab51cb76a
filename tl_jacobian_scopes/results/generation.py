"""`GenerationResult`: a scope explaining every token a model generated, prompt and continuation apart."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ..views.page import ScopeView

from jaxtyping import Float
from torch import Tensor

from ..errors import DataFileError, ScopeError
from .base import ResultRows, ViewableResult
from .files import SavedAsJson, file_header, strip_header
from .scope_matrix import ScopeMatrix
from .scope_result import ScopeResult, TokenScore


@dataclass(eq=False)  # == compares saved content (SavedAsJson)
class GenerationResult(ResultRows[ScopeResult], ViewableResult, SavedAsJson):
    """One scope explaining each generated token, built by :func:`tl_jacobian_scopes.explain_generation`.

    Row ``i`` of ``matrix`` explains generated token ``i``: the prediction at position
    ``prompt_length - 1 + i`` of the whole sequence (prompt + continuation), scored over
    every token up to it. The ids are the ones the model generated, never re-tokenized.

    Attributes:
        matrix: The scope at each explained position (:class:`ScopeMatrix`).
        prompt_length: Number of prompt tokens (BOS included); the continuation follows.
        generated: The generated token ids, in order.
        generation: The ``generate()`` settings used (``do_sample``, ``max_new_tokens``, ...).

    Examples:
        >>> g = tjs.explain_generation(model, "The capital of France is", max_new_tokens=4)
        >>> tokens, first = g.generated_str_tokens, g.top(3)[0]
    """

    matrix: ScopeMatrix
    prompt_length: int
    generated: list[int]
    generation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, start = len(self.generated), self.prompt_length - 1
        tokens = self.matrix[0].tokens.tolist() if len(self.matrix) else []
        if not (self.prompt_length >= 1 and n == len(self.matrix) and len(tokens) == self.prompt_length + n
                and self.matrix.positions == list(range(start, start + n))
                and tokens[self.prompt_length:] == list(self.generated)):
            raise ScopeError(
                "A GenerationResult needs one matrix row per generated token, explaining positions "
                "prompt_length - 1 onwards of the prompt + generated ids: build it with tjs.explain_generation()."
            )

    # ---- reading ------------------------------------------------------------------------

    @property
    def scope(self) -> str:
        return self.matrix.scope

    @property
    def str_tokens(self) -> list[str]:
        """Every token: prompt, then continuation."""
        return self.matrix.str_tokens

    @property
    def prompt_str_tokens(self) -> list[str]:
        return self.str_tokens[: self.prompt_length]

    @property
    def generated_str_tokens(self) -> list[str]:
        return self.str_tokens[self.prompt_length :]

    @property
    def scores(self) -> Float[Tensor, "n_generated pos"]:
        """``[n_generated, n_tokens]``: row ``i`` explains generated token ``i``."""
        return self.matrix.scores

    def _rows(self) -> list[ScopeResult]:
        """One :class:`ScopeResult` per generated token: ``r[i]`` explains generated token ``i``."""
        return self.matrix.results

    def top(self, k: int = 5) -> list[list[TokenScore]]:
        """For each generated token, the ``k`` highest-scoring tokens before it, best first."""
        return [r.top(k) for r in self.matrix]

    def to_dataframe(self) -> "pd.DataFrame":
        """Long format: :meth:`ScopeMatrix.to_dataframe` plus ``step`` (which generated token),
        ``generated`` (its text) and ``in_prompt`` (whether the scored token is in the prompt)."""
        frame = self.matrix.to_dataframe()
        step = frame["explained"] - (self.prompt_length - 1)
        frame.insert(1, "step", step)
        frame.insert(2, "generated", [self.generated_str_tokens[s] for s in step])
        frame["in_prompt"] = frame["position"] < self.prompt_length
        return frame

    # ---- files --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict holding the matrix (:meth:`ScopeMatrix.to_dict`) and the generation."""
        return {**file_header("GenerationResult"), "prompt_length": self.prompt_length, "generated": list(self.generated),
                "generation": dict(self.generation), "matrix": self.matrix.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationResult":
        """Inverse of :meth:`to_dict`.

        Raises:
            DataFileError: The dict is not one :meth:`to_dict` wrote, or its parts disagree.
        """
        fix = "write it with GenerationResult.save_json() and do not edit its structure"
        data = strip_header(data, "GenerationResult", accepted=("generation",))
        length, generated, generation = data.get("prompt_length"), data.get("generated"), data.get("generation", {})
        if (not isinstance(length, int) or isinstance(length, bool) or not isinstance(generated, list)
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in generated)
                or not isinstance(generation, dict)):
            raise DataFileError(f"'prompt_length' must be an int, 'generated' a list of token ids: {fix}.")
        matrix = ScopeMatrix.from_dict(data.get("matrix"))  # type: ignore[arg-type]
        try:
            return cls(matrix, length, generated, generation)
        except ScopeError as exc:
            raise DataFileError(f"The generation and its matrix disagree ({exc}): {fix}.") from exc

    # ---- views --------------------------------------------------------------------------

    def show(self) -> "ScopeView":
        """The prompt and the continuation (set apart), a generated-token × token heatmap, and
        each generated token's explanation as token colouring (offline HTML)."""
        return generation_view(self)


    def __repr__(self) -> str:
        shown = ", ".join(repr(t) for t in self.generated_str_tokens[:6]) + (", ..." if len(self) > 6 else "")
        return (f"GenerationResult(scope={self.scope!r}, prompt_tokens={self.prompt_length}, "
                f"generated={len(self)} [{shown}])")


def generation_view(result: GenerationResult) -> "ScopeView":
    """The HTML view of a :class:`GenerationResult` (built from the shared view helpers)."""
    from ..views.colors import scope_color
    from ..views.components import circuitsvis_element, heatmap
    from ..views.page import ScopeView

    r, first = result, result.matrix[0]
    color = scope_color(r.scope)
    settings = ", ".join(f"{k}={v!r}" for k, v in r.generation.items())
    prompt = "".join(f'<span class="tjs-prompt">{html.escape(t)}</span>' for t in r.prompt_str_tokens)
    continuation = "".join(f"<b>{html.escape(t)}</b>" for t in r.generated_str_tokens)
    header = (
        f'<div class="tjs-header" style="border-left:4px solid {color}"><b>{html.escape(r.scope)}</b> scope '
        f"({html.escape(first.score_kind)} scores) explaining {len(r)} generated token(s) · "
        f"{html.escape(first.model_name)}<br><span class=\"tjs-params\">{html.escape(settings)}</span></div>"
        f'<div class="tjs-generation" style="white-space:pre-wrap;font-family:monospace;padding:4px 10px">'
        f'<span style="color:#666">{prompt}</span><span style="background:#ffe9a8">{continuation}</span></div>'
    )
    rows = [f"+{i}: {t}" for i, t in enumerate(r.generated_str_tokens)]
    cols = [f"{i}:{t}" if i < r.prompt_length else f"{i}:{t} ◂" for i, t in enumerate(r.str_tokens)]
    values = r.scores.T  # [tokens, generated]
    peak = values.max(dim=0).values.clamp_min(1e-30)
    return ScopeView(
        [
            header,
            heatmap(r.scores, rows, cols, color,
                     f"Generated token (row) × token it depends on; columns marked ◂ are generated "
                     f"(prompt: tokens 0–{r.prompt_length - 1})"),
            "<h4>Tokens coloured per generated token (each divided by its own maximum)</h4>",
            circuitsvis_element("ColoredTokensMulti", tokens=r.str_tokens, values=(values / peak).tolist(), labels=rows),
        ],
        f"{r.scope} scope of a generation",
    )
