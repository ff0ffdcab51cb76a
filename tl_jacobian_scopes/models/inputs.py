"""Turn user inputs (prompt, target, position) into validated token ids and indices.

Every check here runs before any forward pass, and every error names the fix.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import PositionError, PromptError, TargetError
from .access import ModelAccess

Prompt = Union[str, Tensor, Sequence[int]]
Target = Union[str, int, None]


def prepare_tokens(
    access: ModelAccess, prompt: Prompt, prepend_bos: Optional[bool] = None
) -> Int[Tensor, "1 pos"]:
    """Tokenize (or check) a prompt and return tokens of shape ``[1, pos]``.

    Args:
        access: The model.
        prompt: A string, or token ids (1-D tensor or list, or a ``[1, pos]`` tensor).
        prepend_bos: For strings: whether to prepend BOS (default: the model's setting).

    Raises:
        PromptError: Empty prompt, bad token ids, or longer than the model's context.
    """
    if isinstance(prompt, (bytes, bytearray)):
        raise PromptError("The prompt is bytes: decode it first (prompt.decode('utf-8')) or pass token ids.")
    if isinstance(prompt, str):
        _check_encodable(prompt, "prompt")
        if prompt == "":
            raise PromptError(
                "The prompt is empty: pass the text whose next-token prediction you want explained."
            )
        tokens = access.to_tokens(prompt, prepend_bos=prepend_bos)
    else:
        if isinstance(prompt, np.ndarray) and prompt.dtype.kind in "iu":
            prompt = torch.from_numpy(prompt)
        if not isinstance(prompt, Tensor):
            try:
                prompt = torch.tensor(list(prompt), dtype=torch.long)
            except (TypeError, ValueError) as exc:
                raise PromptError(
                    f"Cannot read a prompt of type {type(prompt).__name__}: pass a string or token ids."
                ) from exc
        if prompt.device.type == "meta":
            raise PromptError("The token ids are on the meta device (no values): pass real ids, e.g. model.to_tokens(text).")
        if prompt.is_floating_point() or prompt.is_complex() or prompt.dtype == torch.bool:
            raise PromptError(
                f"Token ids must be integers, got dtype {prompt.dtype}: pass model.to_tokens(text)."
            )
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1:
            raise PromptError(
                f"Expected one prompt of token ids with shape [pos] or [1, pos], got {tuple(prompt.shape)}."
            )
        tokens = prompt.long().unsqueeze(0)
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= access.d_vocab):
            raise PromptError(
                f"Token ids must lie in [0, {access.d_vocab}); got ids from {int(tokens.min())} "
                f"to {int(tokens.max())}."
            )
    n_tokens = tokens.shape[-1]
    if n_tokens == 0:
        raise PromptError("The prompt has no tokens: pass at least one token.")
    if n_tokens > access.n_ctx:
        raise PromptError(
            f"The prompt has {n_tokens} tokens but the model's context holds {access.n_ctx}: "
            f"shorten it by {n_tokens - access.n_ctx} tokens."
        )
    # A copy: ids made under inference_mode() cannot be used where autograd records.
    return tokens.to(access.input_device).clone()


def _check_encodable(text: str, role: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptError(
            f"The {role} holds a character that is not valid Unicode text ({exc.reason} at index {exc.start}, "
            f"{text[exc.start:exc.end]!r}): remove it, or decode the source with errors='replace'."
        ) from exc


def resolve_position(position: Optional[int], n_tokens: int) -> int:
    """Return the explained position as a non-negative index (default: the last token).

    Negative positions count from the end, as in Python (``-1`` is the last token).
    """
    if position is None:
        return n_tokens - 1
    if isinstance(position, np.ndarray) and position.size == 1 or isinstance(position, Tensor) and position.numel() == 1:
        position = position.item()
    if isinstance(position, bool) or not isinstance(position, numbers.Integral):
        raise PositionError(f"position must be an int, got {type(position).__name__}.")
    if not -n_tokens <= position < n_tokens:
        raise PositionError(
            f"position {position} is outside the prompt of {n_tokens} tokens: use 0..{n_tokens - 1} "
            f"(or -{n_tokens}..-1 counting from the end; default is the last token)."
        )
    return int(position) % n_tokens


def resolve_token(access: ModelAccess, token: Target, role: str = "target") -> Optional[int]:
    """Return the vocabulary id of a single-token string or id (``None`` stays ``None``).

    Raises:
        TargetError: If a string is not exactly one token, or an id is out of range.
    """
    if token is None:
        return None
    if isinstance(token, Tensor):
        if token.numel() != 1 or token.is_floating_point() or token.is_complex() or token.dtype == torch.bool:
            raise TargetError(f"{role} as a tensor must hold one integer token id, got shape {tuple(token.shape)} "
                              f"and dtype {token.dtype}: pass an int, e.g. int(t) of an integer tensor.")
        token = int(token)
    if isinstance(token, bool):
        raise TargetError(f"{role} must be a token string or a token id, got a bool.")
    if isinstance(token, numbers.Integral):
        token = int(token)
        if not 0 <= token < access.d_vocab:
            raise TargetError(f"{role} id {token} is outside the vocabulary [0, {access.d_vocab}).")
        return token
    if isinstance(token, str):
        _check_encodable(token, role)
        if token == "":
            raise TargetError(f"{role} is an empty string: pass one token, e.g. ' Paris'.")
        ids = access.to_tokens(token, prepend_bos=False)[0].tolist()
        if len(ids) != 1:
            pieces = [access.token_str(i) for i in ids]
            hint = ""
            if not token.startswith(" ") and len(access.to_tokens(" " + token, prepend_bos=False)[0]) == 1:
                hint = f" Did you mean {' ' + token!r} (with a leading space)?"
            raise TargetError(
                f"{role} {token!r} is {len(ids)} tokens {pieces}, not one: pass a single token "
                f"(or its id).{hint}"
            )
        return int(ids[0])
    raise TargetError(f"{role} must be a token string or a token id, got {type(token).__name__}.")


def near_variants(access: ModelAccess, text: str) -> dict[int, str]:
    """Single tokens whose text nearly equals ``text``: with or without a leading space, in
    lower, upper, title or first-capital case (``"Paris"`` → ``" Paris"``, ``"paris"``, ...).

    Returns ``{token id: token text}``, without the id of ``text`` itself. Only these spellings
    are tried (a handful of tokenizations, no vocabulary scan), so the check stays cheap.
    """
    core = text.strip()
    if not core:
        return {}
    spellings = {core, core.lower(), core.upper(), core.title(), core[:1].upper() + core[1:]}
    found: dict[int, str] = {}
    own = access.to_tokens(text, prepend_bos=False)[0].tolist()
    for spelling in sorted(spellings):
        for candidate in (spelling, " " + spelling):
            if candidate == text:
                continue
            ids = access.to_tokens(candidate, prepend_bos=False)[0].tolist()
            # The token must read back as the spelling: an unknown word's <unk> is no alternative.
            if len(ids) == 1 and ids != own and access.token_str(ids[0]).strip() == spelling:
                found.setdefault(int(ids[0]), candidate)
    return found


def tokenization_problem(access: ModelAccess, text: str, ids: Optional[Sequence[int]] = None) -> Optional[str]:
    """Why ``text`` cannot be the decoding of the ids it tokenizes to, or ``None``.

    Text decoded from a model's ids (``model.to_string(ids)``) re-tokenizes to the *canonical*
    ids of that text, which may differ from the ids the model produced (18 generated ``"-"``
    tokens come back as 3 tokens). In general that cannot be seen from the text alone; two
    cheap signs are certain, and these are what this reports: the text holds U+FFFD (bytes
    that did not decode, e.g. a character split across tokens), or its ids do not decode back
    to it. Pass token ids to explain exactly what the model produced.

    ``ids``: the ids the text was already tokenized to for the scope (BOS included or not).
    When they decode back to the text, nothing is wrong with the ids the scope explains and
    no second tokenization is made; otherwise the text is checked on its own.
    """
    if "\ufffd" in text:
        return "holds U+FFFD ('\ufffd'), the mark of bytes that did not decode (a character split across tokens)"
    tokenizer = access.tokenizer
    if tokenizer is None:
        return None
    if ids is not None:
        bos = getattr(tokenizer, "bos_token_id", None)
        body = list(ids[1:]) if len(ids) and bos is not None and int(ids[0]) == bos else list(ids)
        if _decode(tokenizer, body) == text:
            return None
    own = access.to_tokens(text, prepend_bos=False)[0].tolist()
    decoded = _decode(tokenizer, own)
    if decoded != text:
        return f"tokenizes to ids that decode to {decoded[:60]!r}, not to itself"
    return None


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    try:
        return str(tokenizer.decode(ids, clean_up_tokenization_spaces=False))
    except TypeError:  # a tokenizer without that option
        return str(tokenizer.decode(ids))
