"""The prompts of a sweep: a JSONL file of ``{"text": ...}`` objects, read with line numbers.

Besides ``"text"``, a line may carry its own ``"target"`` and ``"contrast"`` (a token
string such as ``" Paris"``, or a token id) and ``"position"`` (an int, negative from the
end); other fields are ignored.

Examples:
    >>> _ = open("data.jsonl", "w").write('{"text": "The capital of France is", "target": " Paris"}\\n')
    >>> read_prompts("data.jsonl")[0].target
    ' Paris'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import DataFileError
from ..jsonl import jsonl_objects

Token = Union[str, int, None]


@dataclass(frozen=True)
class Prompt:
    """One line of the data file: its id (0-based among the non-blank lines), line number,
    text and optional per-prompt target, contrast and position."""

    id: int
    line: int
    text: str
    target: Token = None
    contrast: Token = None
    position: Optional[int] = None

    def inputs(self) -> dict[str, Any]:
        """What the record is computed from (hashed into its key)."""
        return {k: v for k, v in asdict(self).items() if k not in ("id", "line")}


def _check_token(path: Path, lineno: int, name: str, value: Any) -> Token:
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise DataFileError(f"{path}:{lineno}: \"{name}\" must be a token string such as \" Paris\" or a token id, "
                        f"got {json.dumps(value)[:40]}: fix that line.")


def read_prompts(path: Union[str, Path]) -> list[Prompt]:
    """Every non-blank line of a JSONL file of ``{"text": ...}`` objects.

    Raises:
        DataFileError: a missing or unreadable file, no texts, or a malformed line
            (reported as ``path:line: ...``).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataFileError(f"{path} {what}: pass a JSONL file with one {{\"text\": ...}} object per line.")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{path} cannot be read as UTF-8 text ({exc}): pass a JSONL file.") from exc
    prompts: list[Prompt] = []
    for lineno, obj in jsonl_objects(path, raw, 'each line must be an object like {"text": "..."}'):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataFileError(
                f"{path}:{lineno}: expected an object with a string \"text\" field, got {json.dumps(obj)[:60]!r}."
            )
        position = obj.get("position")
        if position is not None and (isinstance(position, bool) or not isinstance(position, int)):
            raise DataFileError(f"{path}:{lineno}: \"position\" must be an integer token index, "
                                f"got {json.dumps(position)[:40]}: fix that line.")
        prompts.append(Prompt(len(prompts), lineno, obj["text"], _check_token(path, lineno, "target", obj.get("target")),
                              _check_token(path, lineno, "contrast", obj.get("contrast")), position))
    if not prompts:
        raise DataFileError(f"{path} holds no texts: it needs one {{\"text\": ...}} object per line.")
    return prompts
