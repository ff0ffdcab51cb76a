"""Result files: one header for every JSON file the library writes, and ``tjs.load``.

Every ``save_json`` writes a dict that starts with a header naming its type::

    {"format": "tl_jacobian_scopes", "kind": "ScopeResult", "version": 1, ...}

:func:`load` reads the header and hands the dict to the reader registered for that kind
(:func:`register_kind`); a result type added later registers itself the same way. Files
written before the header existed are recognised by their keys. Files are parsed as JSON
only: nothing is unpickled or evaluated.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

from ..errors import DataFileError, OutputPathError

FORMAT = "tl_jacobian_scopes"
#: The newest file version this library reads (and the one it writes).
VERSION = 1

#: kind -> reader of the dict (the header included).
_READERS: dict[str, Callable[[dict[str, Any]], Any]] = {}
#: (test on a headerless dict, kind): how files written before the header are recognised.
_LEGACY: list[tuple[Callable[[dict[str, Any]], bool], str]] = []
#: Older spellings of a kind -> the kind.
_OLD_KINDS: dict[str, str] = {}


def strict_json_value(obj: Any) -> Any:
    """``obj`` with tensors and arrays as lists and every non-finite float as None.

    JSON has no NaN or infinity (Python's ``json`` writes the non-standard ``NaN``, which
    strict parsers such as JavaScript's ``JSON.parse`` reject), so they are written as null
    and read back as NaN where a float is expected.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if hasattr(obj, "tolist"):  # tensors, numpy arrays and numpy scalars
        return strict_json_value(obj.tolist())
    return obj


def dump_strict_json(data: Any) -> str:
    """``data`` as standard JSON text (non-finite floats as null, never ``NaN``).

    Raises:
        OutputPathError: ``data`` is nested too deeply for JSON (e.g. a ``params`` value
            hundreds of levels deep).
    """
    try:
        text = json.dumps(strict_json_value(data), indent=2, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise _too_deep() from None
    # A lone surrogate (a token read from a JSON file as "\\ud800") cannot be written as UTF-8:
    # write it as JSON's own escape, which reads back as the same string.
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _too_deep() -> OutputPathError:
    return OutputPathError(
        "This result holds a value nested too deeply to write as JSON (hundreds of levels, e.g. in its params): "
        "flatten that value (or store it as a string) before saving."
    )


def write_output(path: Union[str, Path], write: Callable[[Path], Any]) -> Path:
    """Call ``write(path)``, turning an OS failure into :class:`OutputPathError` that names the fix."""
    path = Path(path)
    try:
        write(path)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot write {str(path)!r}: {exc.strerror or exc}. Check that its folder exists and is writable."
        ) from exc
    return path


def read_json_file(path: Union[str, Path]) -> Any:
    """Parse a JSON file, raising :class:`DataFileError` when it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFileError(f"Cannot read results file {str(path)!r}: {exc}. Check the path.") from exc
    except UnicodeDecodeError as exc:  # a binary file (a pickle, an image, ...)
        raise DataFileError(f"{str(path)!r} is not a JSON results file (not UTF-8 text): "
                            "pass a file written by save_json().") from exc
    try:
        return json.loads(text)  # also accepts the NaN that files written by older versions hold
    except (ValueError, RecursionError) as exc:  # bad JSON, a 5000-digit integer, nesting beyond recursion
        raise DataFileError(
            f"{str(path)!r} is not valid JSON ({str(exc)[:200]}); write it with save_json() "
            "and do not edit its structure."
        ) from exc


_Saved = TypeVar("_Saved", bound="SavedAsJson")


class SavedAsJson:
    """``save_json``, ``load_json`` and ``==`` for a result type that has ``to_dict`` and
    ``from_dict``: one way to write, read and compare every result file."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[_Saved], data: dict[str, Any]) -> _Saved:
        raise NotImplementedError

    def save_json(self, path: Union[str, Path]) -> Path:
        """Write :meth:`to_dict` to ``path`` as standard JSON (NaN and infinity as null).

        Read it back with :func:`tl_jacobian_scopes.load` (any result file) or ``load_json``.
        """
        try:
            data = self.to_dict()
        except RecursionError:
            raise _too_deep() from None
        text = dump_strict_json(data)
        return write_output(path, lambda p: p.write_text(text, encoding="utf-8"))

    @classmethod
    def load_json(cls: type[_Saved], path: Union[str, Path]) -> _Saved:
        """Read a file written by :meth:`save_json` (plain JSON: nothing is unpickled or run)."""
        return cls.from_dict(read_json_file(path))

    def __eq__(self, other: object) -> bool:
        """Equal when of the same type with the same saved content (:meth:`to_dict`): exact
        values, NaN equal to NaN (tensor fields make a field-by-field ``==`` raise)."""
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, SavedAsJson)
        return bool(self.to_dict() == other.to_dict())

    __hash__ = None  # type: ignore[assignment]  # mutable results: equal by content, so unhashable


def file_header(kind: str) -> dict[str, Any]:
    """The header that starts every saved dict of ``kind`` (e.g. ``"ScopeResult"``)."""
    return {"format": FORMAT, "kind": kind, "version": VERSION}


def strip_header(data: Any, kind: str, accepted: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` without its header, after checking that the header (if any) names ``kind``.

    ``accepted`` lists other ``kind`` values that mean the same (older spellings).

    Raises:
        DataFileError: ``data`` is not a dict, or its header names another format, kind or
            a newer version.
    """
    if not isinstance(data, dict):
        raise DataFileError(f"A {kind} dict is expected, got {type(data).__name__}.")
    fields: dict[str, Any] = dict(data)
    fmt, found, version = fields.pop("format", None), fields.pop("kind", None), fields.pop("version", None)
    if fmt is not None and fmt != FORMAT:
        raise DataFileError(f"This is a {fmt!r} file, not a {FORMAT} file: it cannot be read as a {kind}.")
    if found is not None and found != kind and found not in accepted:
        raise DataFileError(
            f"This file holds a {found!r}, not a {kind}: read it with tjs.load(path), which picks the right type."
        )
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise DataFileError(f"The file's 'version' must be an integer, got {version!r}.")
    if version is not None and version > VERSION:
        raise DataFileError(
            f"File version {version} is newer than this library reads (up to {VERSION}): "
            "upgrade tl_jacobian_scopes to read it."
        )
    return fields


def register_kind(kind: str, reader: Callable[[dict[str, Any]], Any],
                  legacy: Optional[Callable[[dict[str, Any]], bool]] = None, old_kinds: tuple[str, ...] = ()) -> None:
    """Make :func:`load` read files whose header has ``"kind": kind`` with ``reader``.

    Args:
        kind: The type's name as written in its files (its class name).
        reader: Builds the object from the parsed dict (usually ``Class.from_dict``); raises
            :class:`DataFileError` on a malformed dict.
        legacy: For types that were saved before the header existed: recognises such a dict.
        old_kinds: Other ``"kind"`` values that older versions wrote for this type.

    Examples:
        >>> from tl_jacobian_scopes.evaluation.patching_result import PatchingResult
        >>> register_kind("PatchingResult", PatchingResult.from_dict)
    """
    _READERS[kind] = reader
    _OLD_KINDS.update({old: kind for old in old_kinds})
    if legacy is not None:
        _LEGACY.append((legacy, kind))


def from_dict(data: Any, where: str = "The data") -> Any:
    """The result object a saved dict describes, whatever its kind.

    Raises:
        DataFileError: ``data`` is not a dict of a known kind, or is malformed.
    """
    known = ", ".join(sorted(_READERS))
    if not isinstance(data, dict):
        raise DataFileError(f"{where} holds a JSON {type(data).__name__}; a saved result (one of {known}) "
                            "is a JSON object written by save_json().")
    fmt, kind = data.get("format"), data.get("kind")
    if fmt is not None and fmt != FORMAT:
        raise DataFileError(f"{where} is a {str(fmt)[:80]!r} file, not a {FORMAT} result (one of {known}).")
    if kind is None and fmt is None:
        kind = next((k for test, k in _LEGACY if test(data)), None)
    kind = _OLD_KINDS.get(kind, kind) if isinstance(kind, str) else kind
    if not isinstance(kind, str) or kind not in _READERS:
        raise DataFileError(f"{where} is not a saved result: expected one of {known} "
                            f"(a JSON object written by save_json()), found kind {str(kind)[:80]!r}.")
    try:
        return _READERS[kind](data)
    except DataFileError as exc:
        raise DataFileError(f"{where} is not a valid {kind}: {exc}") from exc


def load(path: Union[str, Path]) -> Any:
    """Read any JSON file the library writes (``save_json``) back into its object.

    Returns a :class:`ScopeResult`, :class:`ScopeMatrix`, :class:`ScopeBatch`, or any other
    registered result type, as the file's header says.

    Raises:
        DataFileError: The file is missing, not JSON, or not a saved result; the message
            names the path and what was expected.

    Examples:
        >>> r = tjs.semantic_scope(model, "The capital of France is")
        >>> path = r.save_json("r.json")
        >>> tjs.load("r.json") == r
        True
    """

    return from_dict(read_json_file(path), where=repr(str(path)))
