"""JSON Lines files read with line numbers, so that a malformed line is reported as ``path:line``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Union

from .errors import DataFileError


def jsonl_objects(path: Union[str, Path], text: str, fix: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of ``text`` (read from ``path``).

    Raises:
        DataFileError: ``path:line: not valid JSON (...)``, followed by ``fix``.
    """
    # split("\n"), not splitlines(): the latter also breaks at U+2028 etc. inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno}): {fix}.") from None
