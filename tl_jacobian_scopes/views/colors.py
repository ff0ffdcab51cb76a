"""How views colour and label scores: each method's colour comes from its declaration
(``Method.color``), so that a new method is one declaration; scopes never share a colour scale."""

from __future__ import annotations

from typing import Iterator, Mapping

from ..scopes.api import SCOPES  # the registry of declarations, a layer below the views

#: The colour of a method that declares none.
DEFAULT_COLOR = "#444444"

NORMALIZATION_TEXT = {
    "raw": "raw sensitivity ‖vᵀ∂y/∂a‖ (docs/method.md; deep layers look small: the residual norm grows)",
    "scaled": "scaled: sensitivity × ‖a‖ (× ‖a‖² for Fisher), comparable across layers",
}


class _DeclaredColors(Mapping[str, str]):
    """``{method name: colour}`` for every registered method that declares a colour, read from
    the registry on each access (a method registered later is coloured at once)."""

    def _colors(self) -> dict[str, str]:
        return {name: s.method.color for name, s in SCOPES.items() if s.method.color}

    def __getitem__(self, name: str) -> str:
        return self._colors()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._colors())

    def __len__(self) -> int:
        return len(self._colors())

    def __repr__(self) -> str:
        return f"SCOPE_COLORS({self._colors()!r})"


#: The colour of each scope, from the declarations; scopes never share a colour scale.
SCOPE_COLORS: Mapping[str, str] = _DeclaredColors()


def scope_color(scope: str) -> str:
    """The colour of ``scope``'s views, from its declaration (grey for a method that declares none)."""
    return SCOPE_COLORS.get(scope, DEFAULT_COLOR)
