"""Tokens → values: which value of a serialized series each token belongs to, and a value's score
from its tokens' scores (combined as the scope combines positions, docs/method.md §3.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import OptionError, PromptError
from ..models.access import ModelAccess
from .serialize import Serialized


@dataclass
class TokenMap:
    """How a serialized series is tokenized.

    Attributes:
        ids: Token ids of the whole text (BOS first when the model prepends one).
        token_value: Per token: index of the value whose digits it covers, or -1 (separator, BOS).
        token_sep: Per token: index of the value whose separator it covers (-1 if none), for
            tokens that hold no digits.
        first: Per value: index of its first token.
        last: Per value: index of its last token.
        bos: Whether ids[0] is a prepended BOS.
    """

    ids: list[int]
    token_value: np.ndarray
    token_sep: np.ndarray
    first: np.ndarray
    last: np.ndarray
    bos: bool


def fast_tokenizer(access: ModelAccess) -> Any:
    tok = access.tokenizer
    if tok is None or not getattr(tok, "is_fast", False):
        raise OptionError(
            "Time-series scopes map tokens to values with the tokenizer's character offsets, which need a fast "
            "(Rust) tokenizer: load the model with a tokenizers-backed tokenizer (AutoTokenizer(..., use_fast=True))."
        )
    return tok


def _prepends_bos(access: ModelAccess) -> bool:
    cfg = getattr(access.model, "cfg", None)
    tok = access.tokenizer
    return bool(getattr(cfg, "default_prepend_bos", False)) and getattr(tok, "bos_token_id", None) is not None


def token_map(access: ModelAccess, s: Serialized, max_tokens: Optional[int] = None) -> TokenMap:
    """Tokenize ``s.text`` and map every token to a value (module docstring).

    ``max_tokens``: refuse (:class:`PromptError`) a series of more tokens, before mapping them.

    Raises:
        PromptError: More than ``max_tokens`` tokens.
        OptionError: A token covers digits of two values (the tokenizer merges across the separator).
    """
    tok = fast_tokenizer(access)
    enc = tok(s.text, return_offsets_mapping=True, add_special_tokens=False)
    ids = list(enc["input_ids"])
    bos = _prepends_bos(access)
    if max_tokens is not None and len(ids) + bos > max_tokens:  # before the per-token work
        raise PromptError(
            f"The series is {len(ids) + bos} tokens, more than the model's context of {max_tokens}: pass fewer values "
            f"(e.g. series[-{max(1, len(s) * max_tokens // (len(ids) + bos) - 2)}:]) or fewer digits."
        )
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts, ends = s.spans[:, 0], s.spans[:, 1]
    token_value = np.full(len(ids), -1, dtype=np.int64)
    token_sep = np.full(len(ids), -1, dtype=np.int64)
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        # values whose digit span [start, end) overlaps the token's span [a, b) (spans are sorted, disjoint)
        lo_hit = int(np.searchsorted(ends, a, side="right"))
        hit = np.arange(lo_hit, max(lo_hit, int(np.searchsorted(starts, b, side="left"))))
        if len(hit) > 1:
            raise OptionError(
                f"Token {t} ({s.text[a:b]!r}) covers digits of {len(hit)} values: this tokenizer merges numbers "
                f"across the separator {s.sep!r}; serialize with another separator, e.g. sep=', '."
            )
        if len(hit) == 1:
            token_value[t] = hit[0]
        else:
            token_sep[t] = max(int(np.searchsorted(ends, a, side="right")) - 1, -1)
    n = len(s)
    first = np.full(n, -1, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    for t in range(len(ids)):
        v = token_value[t]
        if v >= 0:
            if first[v] < 0:
                first[v] = t
            last[v] = t
    if (first < 0).any():
        raise OptionError("Some values got no token: the tokenizer dropped characters of the series text.")
    if bos:
        ids = [int(tok.bos_token_id)] + ids
        token_value = np.concatenate([[-1], token_value])
        token_sep = np.concatenate([[-1], token_sep])
        first, last = first + 1, last + 1
    return TokenMap(ids, token_value, token_sep, first, last, bos)


def aggregate_values(scores: np.ndarray, owner: np.ndarray, n_values: int, score_kind: str) -> np.ndarray:
    """Combine token scores into one score per value, as the scope combines positions.

    Args:
        scores: One score per token.
        owner: Per token, the value it belongs to (-1: none).
        n_values: Number of values.
        score_kind: ``"quadratic"`` (Fisher: scores add) or anything else (norm scores: the
            norm over a value's tokens is the root of the sum of squares).
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = owner >= 0
    out = np.zeros(n_values)
    if score_kind == "quadratic":
        np.add.at(out, owner[keep], scores[keep])
        return out
    np.add.at(out, owner[keep], scores[keep] ** 2)
    return np.sqrt(out)
