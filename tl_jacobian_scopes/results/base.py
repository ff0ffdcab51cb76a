"""The one protocol every result shares: views from :meth:`show`, rows from :meth:`_rows`.

A result type writes one method, ``show()`` (its view), and gets the other two of the view trio:
``_repr_html_()`` (a notebook displays the view) and ``save_html(path)`` (one offline page). A
result made of rows (a :class:`ScopeMatrix` of positions, a :class:`GenerationResult` of
generated tokens, a forecast matrix of steps) names them once in ``_rows()`` and gets ``len``,
indexing and iteration.

The views sit a layer above the results (docs/architecture.md): ``show()`` imports them inside
the method, so that importing a result never loads the views.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Generic, Iterator, Optional, Sequence, Sized, TypeVar, Union

if TYPE_CHECKING:
    from ..views.page import ScopeView

Row = TypeVar("Row")


class ViewableResult:
    """``show()`` written by the result; ``_repr_html_()`` and ``save_html()`` from it."""

    def show(self) -> "ScopeView":
        """The result's offline HTML view."""
        raise NotImplementedError(f"{type(self).__name__} must define show()")

    def _repr_html_(self) -> Optional[str]:
        # A result with no rows has no view: None lets a notebook print its text repr, not a traceback.
        if isinstance(self, Sized) and len(self) == 0:
            return None
        return self.show()._repr_html_()

    def save_html(self, path: Union[str, Path]) -> Path:
        """Write :meth:`show` as one self-contained HTML file (no network needed to open it)."""
        return self.show().save(path)


class ResultRows(Generic[Row]):
    """``len(r)``, ``r[i]`` and ``for row in r`` over the rows that ``_rows()`` names."""

    def _rows(self) -> Sequence[Row]:
        raise NotImplementedError(f"{type(self).__name__} must define _rows()")

    def __len__(self) -> int:
        return len(self._rows())

    def __getitem__(self, i: int) -> Row:
        return self._rows()[i]

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows())
