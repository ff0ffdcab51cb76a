"""`ScopeBatch`: the results of one scope call on a list of prompts (still a plain list)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Callable, List, Optional, SupportsIndex, TypeVar, Union, overload

if TYPE_CHECKING:
    import pandas as pd

    from ..views.page import ScopeView

from ..errors import DataFileError, ScopeError
from .base import ViewableResult
from .files import SavedAsJson, file_header, strip_header
from .scope_matrix import ScopeMatrix
from .scope_result import ScopeResult, TokenScore

#: A batch holds ScopeResults (one prediction per prompt) or ScopeMatrices (``positions=``).
Item = TypeVar("Item", bound=Union[ScopeResult, ScopeMatrix])


class ScopeBatch(List[Item], ViewableResult, SavedAsJson):
    """One result per prompt, in prompt order: a ``list`` with batch-wide tables and views.

    Indexing, ``len``, iteration and equality are those of a list (a slice or :meth:`copy` is
    again a ScopeBatch); on top of them:
    :meth:`to_dataframe` (one long table with a ``prompt_index`` column), :meth:`show`,
    :meth:`top`, and :meth:`save_json` / :meth:`load_json` (or ``tjs.load``).

    Examples:
        >>> batch = tjs.fisher_scope(model, ["The capital of France is", "2, 4, 6,"])
        >>> best = batch.to_dataframe().groupby("prompt_index").score.max()
        >>> view = batch.show()
    """

    @overload
    def __getitem__(self, index: SupportsIndex) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> "ScopeBatch[Item]": ...

    def __getitem__(self, index: Union[SupportsIndex, slice]) -> Union[Item, "ScopeBatch[Item]"]:
        # A slice stays a batch, so batch[1:].to_dataframe() and .show() work; an index gives the item.
        if isinstance(index, slice):
            return type(self)(super().__getitem__(index))
        return super().__getitem__(index)

    def copy(self) -> "ScopeBatch[Item]":
        """A shallow copy, still a ScopeBatch."""
        return type(self)(self)

    def to_dataframe(self) -> "pd.DataFrame":
        """Every item's :meth:`to_dataframe`, stacked, with ``prompt_index`` as first column."""
        import pandas as pd

        frames = [item.to_dataframe() for item in self]
        for index, frame in enumerate(frames):
            frame.insert(0, "prompt_index", index)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"prompt_index": []})

    def top(self, k: int = 5) -> list[list[TokenScore]]:
        """``item.top(k)`` for every prompt (ScopeResults only)."""
        if any(isinstance(item, ScopeMatrix) for item in self):
            raise ScopeError("top() lists the tokens of single predictions: for ScopeMatrices use batch[i][j].top(k).")
        return [item.top(k) for item in self if isinstance(item, ScopeResult)]

    def show(self) -> "ScopeView":
        """All results in one view: a side-by-side comparison when every prompt has the same
        tokens, otherwise each prompt's view under its index (offline)."""
        from ..views.html import compare, matrix_view, result_sections
        from ..views.page import ScopeView

        if not self:
            raise ScopeError("The batch is empty: there is nothing to show.")
        results = [item for item in self if isinstance(item, ScopeResult)]
        if len(results) == len(self) > 1 and all(r.str_tokens == results[0].str_tokens for r in results):
            return compare(*results, labels=[f"prompt {i} → {r.target_str!r}" for i, r in enumerate(results)])
        sections: list[str] = []
        for index, item in enumerate(self):
            sections.append(f"<h3>Prompt {index}: {html.escape(''.join(item.str_tokens)[:80])}</h3>")
            sections += matrix_view(item).sections if isinstance(item, ScopeMatrix) else result_sections(item)
        return ScopeView(sections, "Jacobian Scopes batch")

    def _repr_html_(self) -> Optional[str]:
        # An empty batch has no view: None lets the notebook show its text repr, not a traceback.
        return self.show()._repr_html_() if self else None


    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the file header (``"kind": "ScopeBatch"``), then each item's dict."""
        return {**file_header("ScopeBatch"), "items": [item.to_dict() for item in self]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScopeBatch[Any]":
        """Inverse of :meth:`to_dict`."""
        items = strip_header(data, "ScopeBatch").get("items")
        if not isinstance(items, list):
            raise DataFileError("A ScopeBatch dict has kind 'ScopeBatch' and a list of items; "
                                "write it with ScopeBatch.save_json().")
        readers: dict[str, Callable[[Any], Any]] = {"ScopeResult": ScopeResult.from_dict, "ScopeMatrix": ScopeMatrix.from_dict,
                   "scope_matrix": ScopeMatrix.from_dict}
        kinds = [item.get("kind", "ScopeResult") if isinstance(item, dict) else None for item in items]
        kinds = [kind if isinstance(kind, str) else repr(kind) for kind in kinds]  # a list would be unhashable
        unknown = sorted({str(k) for k in kinds if k not in readers})
        if unknown:
            raise DataFileError(f"A ScopeBatch holds ScopeResults or ScopeMatrices, found {unknown}.")
        return cls(readers[str(kind)](item) for kind, item in zip(kinds, items))

    def __repr__(self) -> str:
        kinds = sorted({type(item).__name__ for item in self}) or ["items"]
        lines: list[str] = [f"  [{i}] {item!r}" for i, item in enumerate(self[:6])]
        more: list[str] = [f"  ... {len(self) - 6} more"] if len(self) > 6 else []
        return "\n".join([f"ScopeBatch({len(self)} {'/'.join(kinds)}, one per prompt)", *lines, *more])
