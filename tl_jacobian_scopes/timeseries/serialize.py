"""Series as text: ``"51,53,55,"`` with the rescaling kept, so values can be decoded back."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import OptionError, PromptError

#: The paper maps every series into this fraction of the digit range (two digits: 15..85).
LOW, HIGH = 0.15, 0.85


@dataclass
class Serialized:
    """A series written as fixed-width integers joined by a separator (ending with one).

    Attributes:
        values: The written integers (``int64``), one per series value.
        text: ``"51,53,55,"``: every value zero-padded to ``digits`` and followed by ``sep``, so
            the next token a model predicts starts the next value.
        digits: Width of every value.
        sep: The separator.
        raw: The series in its own units (None when it was given as integers without rescaling).
        offset, scale: ``raw ≈ offset + scale · values`` (``decode``); 0 and 1 without rescaling.
        spans: ``[n, 2]`` character span ``[start, end)`` of each value's digits in ``text``.
    """

    values: np.ndarray
    text: str
    digits: int
    sep: str
    raw: Optional[np.ndarray]
    offset: float
    scale: float
    spans: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def decode(self, values: Any) -> Any:
        """Written integers (or their mean, a distribution's support, ...) back in the series' units."""
        out = self.offset + self.scale * np.asarray(values, dtype=np.float64)
        return float(out) if out.ndim == 0 else out

    def encode(self, x: Any) -> np.ndarray:
        """Values in the series' units as (unrounded) written units."""
        return (np.asarray(x, dtype=np.float64) - self.offset) / self.scale

    def head(self, n: int) -> "Serialized":
        """The first ``n`` values (same rescaling)."""
        return _build(self.values[:n], self.digits, self.sep, None if self.raw is None else self.raw[:n],
                      self.offset, self.scale)

    def value_text(self, value: int) -> str:
        """One value as written (zero-padded)."""
        return f"{int(value):0{self.digits}d}"


def _check_sep(sep: Any) -> None:
    if not isinstance(sep, str) or sep == "" or any(c.isdigit() for c in sep):
        raise OptionError(f"sep must be a non-empty string without digits, e.g. ',', got {sep!r}.")


def _check_digits(digits: Any) -> None:
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or not 1 <= digits <= 4:
        raise OptionError(f"digits must be an int in 1..4 (the forecast enumerates 10**digits values), got {digits!r}.")


def _build(values: np.ndarray, digits: int, sep: str, raw: Optional[np.ndarray], offset: float, scale: float) -> Serialized:
    pieces, spans, pos = [], [], 0
    for v in values:
        word = f"{int(v):0{digits}d}"
        spans.append((pos, pos + len(word)))
        pieces.append(word + sep)
        pos += len(word) + len(sep)
    return Serialized(np.asarray(values, dtype=np.int64), "".join(pieces), int(digits), sep, raw, float(offset),
                      float(scale), np.asarray(spans, dtype=np.int64).reshape(-1, 2))


def parse(text: str, sep: str = ",") -> Serialized:
    """Read a string of separator-joined non-negative integers (``"51,53,55,"``; a trailing
    separator is optional). Values are re-written zero-padded to the widest one.

    Raises:
        PromptError: Not separator-joined integers.
    """
    _check_sep(sep)
    body = text.strip()
    if body.endswith(sep):
        body = body[: -len(sep)]
    items = [item.strip() for item in body.split(sep)] if body else []
    bad = next((i for i, item in enumerate(items) if not re.fullmatch(r"[0-9]+", item)), None)
    if not items or bad is not None:
        where = f"item {bad} is {items[bad]!r}" if items and bad is not None else "it holds no values"
        raise PromptError(
            f"The series string must be non-negative integers joined by {sep!r}, such as '51{sep}53{sep}55{sep}', "
            f"but {where}: fix the string, or pass the numbers as a list (they are then rescaled)."
        )
    digits = max(len(item) for item in items)
    _check_digits(digits)
    return _build(np.array([int(item) for item in items]), digits, sep, None, 0.0, 1.0)


def serialize(
    x: Union[Sequence[float], np.ndarray, str, Serialized], digits: int = 2, sep: str = ",",
    rescale: bool = True, low: float = LOW, high: float = HIGH,
) -> Serialized:
    """Write a series as text the way the paper does.

    With ``rescale=True`` (default) the series is min–max mapped onto ``[low, high]`` of the
    digit range and rounded (two digits: about 15..85); ``decode`` maps written integers
    back to the series' units. With ``rescale=False`` the values must already be integers
    that fit in ``digits``. A string is parsed with :func:`parse`.

    Raises:
        PromptError: NaN or infinity in the series, or no values.
        OptionError: Values that do not fit the digits (``rescale=False``), bad ``digits``/``sep``.

    Examples:
        >>> s = serialize([0.0, 0.5, 1.0])
        >>> s.text
        '15,50,85,'
    """
    if isinstance(x, Serialized):
        return x
    if isinstance(x, str):
        return parse(x, sep)
    _check_digits(digits)
    _check_sep(sep)
    try:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PromptError(f"Cannot read the series as float64 numbers ({exc}): pass a list or array of numbers "
                          "within ±1.8e308.") from exc
    if arr.size == 0:
        raise PromptError("The series is empty: pass at least one value.")
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise PromptError(
            f"The series holds a non-finite value ({arr[i]} at index {i}): drop or interpolate it before serializing."
        )
    top = 10**digits - 1
    if not rescale:
        if not np.allclose(arr, np.round(arr)) or arr.min() < 0 or arr.max() > top:
            raise OptionError(
                f"With rescale=False the values must be integers in 0..{top} to fit {digits} digits, got "
                f"{arr.min():g}..{arr.max():g}: pass rescale=True, or more digits."
            )
        return _build(np.round(arr).astype(np.int64), digits, sep, arr, 0.0, 1.0)
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 <= low < high <= 1):
        raise OptionError(f"low and high must satisfy 0 ≤ low < high ≤ 1, got {low!r}, {high!r}.")
    lo, hi = float(arr.min()), float(arr.max())
    # A constant series: any width writes it as `low`; one of its own size keeps offset - lo exact.
    width = hi - lo if hi > lo else (abs(lo) or 1.0)
    # written = round((x - lo) / width * (high - low) * 10**d + low * 10**d)
    scale = width / ((high - low) * 10**digits)
    offset = lo - low * 10**digits * scale
    with np.errstate(all="ignore"):
        written = (arr - offset) / scale
    # A range float64 cannot rescale: wider than its largest number ([1e308, -1e308]), narrower than its
    # smallest step ([0, 5e-324]), or with a written unit finer than float64 resolves at the values' size
    # ([1, 1 + 1e-15]).
    if (not (np.isfinite(width) and np.isfinite(scale) and scale > 0 and np.isfinite(offset))
            or not np.isfinite(written).all() or (hi > lo and width < 10**digits * np.spacing(max(abs(lo), abs(hi))))):
        raise PromptError(
            f"The series spans {lo!r}..{hi!r}, a range that cannot be rescaled onto {digits}-digit integers in float64: "
            "rescale it yourself first (e.g. subtract its mean and divide by its standard deviation, or by a power "
            "of ten), then serialize the result."
        )
    values = np.clip(np.round(written), 0, top).astype(np.int64)
    return _build(values, digits, sep, arr, offset, scale)
