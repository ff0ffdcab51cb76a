"""Prompt sets for the faithfulness benchmark and sweeps, with where they come from.

The LAMBADA sample ships with the package (CC BY 4.0, attribution below and in this folder's
README.md); the IWSLT 2017 prompts may not be redistributed (CC BY-NC-ND 3.0): build that file
yourself and pass its path.

Examples:
    >>> from tl_jacobian_scopes import data
    >>> texts = data.lambada()
    >>> len(texts), texts[0][:23]
    (1000, 'Bob was pensive for the')
    >>> print(data.SOURCES["lambada"].split(";")[0])
    LAMBADA (Paperno et al., ACL 2016, https://zenodo.org/record/2630551), CC BY 4.0
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Optional, Union

from ..errors import DataFileError

__all__ = ["SOURCES", "lambada", "lambada_path", "iwslt_path"]

#: Where each prompt set comes from, and its license.
SOURCES = {
    "lambada": (
        "LAMBADA (Paperno et al., ACL 2016, https://zenodo.org/record/2630551), CC BY 4.0; "
        "1000 passages of the lambada_openai test set (seed 42, at least 50 words, trailing "
        "punctuation stripped), shipped as tl_jacobian_scopes/data/lambada_1000.jsonl"
    ),
    "iwslt": (
        "IWSLT 2017 German-English TED talks (https://wit3.fbk.eu/2017-01; TED Conference LLC), "
        "CC BY-NC-ND 3.0: not shipped, build it yourself and pass its path"
    ),
}


def lambada_path() -> Path:
    """The shipped LAMBADA sample, ``lambada_1000.jsonl`` (a file path usable from any folder)."""
    return Path(str(resources.files(__name__).joinpath("lambada_1000.jsonl")))


def lambada(n: Optional[int] = None) -> list[str]:
    """The first ``n`` (default: all 1000) LAMBADA passages; see :data:`SOURCES`."""
    lines = lambada_path().read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    return texts if n is None else texts[:n]


def iwslt_path(path: Union[str, Path]) -> Path:
    """Check a user-built IWSLT 2017 prompt file (not shipped: its license forbids it).

    Raises:
        DataFileError: the file does not exist, naming where the data come from.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataFileError(
            f"{p} does not exist. The IWSLT 2017 prompts are not shipped ({SOURCES['iwslt']}): build "
            "a JSONL file of {\"text\": \"German: ... English: ...\"} lines from its test set and pass its path."
        )
    return p
