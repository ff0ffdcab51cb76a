"""The model's exact forecast distribution over the next value: every path of value tokens is
scored (with a key-value cache on the plain HF twin of a bridge where it can be rebuilt).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import OptionError
from ..models.access import ModelAccess, model_lock
from ..models.hf_twin import hf_twin
from .tokens import fast_tokenizer


@dataclass
class Forecast:
    """The model's distribution over the next value (every value of the serialized width).

    ``probs[i]`` is the product of the conditional probabilities of the tokens that write
    ``values[i]``, normalised over all ``10**digits`` values; ``mass`` is the total before
    normalising (the probability that the model writes some value of that width next).

    Attributes:
        values: Every candidate, as written (0 .. 10**digits - 1).
        probs: Its probability (sums to 1).
        mass: Unnormalised total probability of the candidates.
        offset, scale: Decoding to the series' units (``offset + scale * value``).
        true_value: The value that follows in the series (teacher-forced steps), else None.
        y_norm: ‖y‖ at the explained position (the effective inverse temperature).
    """

    values: np.ndarray
    probs: np.ndarray
    mass: float
    offset: float = 0.0
    scale: float = 1.0
    true_value: Optional[int] = None
    y_norm: Optional[float] = None

    @property
    def units(self) -> np.ndarray:
        """The candidates in the series' own units."""
        return self.offset + self.scale * self.values.astype(np.float64)

    @property
    def mean(self) -> float:
        """Mean of the forecast, in the series' units."""
        return float((self.probs * self.units).sum())

    @property
    def std(self) -> float:
        """Standard deviation of the forecast, in the series' units."""
        return float(np.sqrt(max((self.probs * (self.units - self.mean) ** 2).sum(), 0.0)))

    @property
    def mode(self) -> float:
        """Most probable value, in the series' units."""
        return float(self.units[int(np.argmax(self.probs))])

    @property
    def mode_value(self) -> int:
        """Most probable value as written."""
        return int(self.values[int(np.argmax(self.probs))])

    @property
    def true(self) -> Optional[float]:
        """The true next value in the series' units (teacher-forced steps), else None."""
        return None if self.true_value is None else self.offset + self.scale * self.true_value

    def prob(self, value: int) -> float:
        """Probability of one written value."""
        return float(self.probs[int(value)]) if 0 <= int(value) < len(self.probs) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"probs": self.probs.tolist(), "mass": self.mass, "mean": self.mean, "std": self.std,
                "mode": self.mode, "true_value": self.true_value, "y_norm": self.y_norm}


def candidate_paths(access: ModelAccess, digits: int, sep: str) -> list[list[int]]:
    """The token ids that write each of the ``10**digits`` values after a separator.

    Each candidate is tokenized in context (``sep + value + sep``) and the tokens inside the
    value's span are kept, so the paths are what the tokenizer produces inside a series.
    """
    tok = fast_tokenizer(access)
    paths = []
    for v in range(10**digits):
        word = f"{v:0{digits}d}"
        text = sep + word + sep
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        a, b = len(sep), len(sep) + len(word)
        inside = [i for i, (x, y) in zip(enc["input_ids"], enc["offset_mapping"]) if x >= a and y <= b and y > x]
        spans = [(x, y) for x, y in enc["offset_mapping"] if x >= a and y <= b and y > x]
        if not spans or spans[0][0] != a or spans[-1][1] != b:
            raise OptionError(
                f"The tokenizer merges the value {word!r} with the separator {sep!r}: serialize with another "
                f"separator, e.g. sep=', '."
            )
        paths.append([int(i) for i in inside])
    return paths


def context_pass(access: ModelAccess, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Log-probabilities at every position ``[pos, vocab]``, ‖y‖ per position, and a KV cache (or None)."""
    model = access.model
    tokens = torch.tensor([ids], device=access.input_device)
    hf = hf_twin(model)
    with model_lock(model), torch.no_grad():  # one call at a time per model, as the scopes do
        if hf is not None:
            out = hf(input_ids=tokens, use_cache=True, output_hidden_states=True)
            logp = torch.log_softmax(out.logits[0].double(), -1)
            y_norm = out.hidden_states[-1][0].double().norm(dim=-1)
            return logp, y_norm, (hf, out.past_key_values)
        from ..models.hook_names import FINAL_HOOK

        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name == FINAL_HOOK)
        return torch.log_softmax(logits[0].double(), -1), cache[FINAL_HOOK][0].double().norm(dim=-1), None


def _branch_logprobs(
    access: ModelAccess, ids: list[int], cache: Any, jobs: list[tuple[int, tuple[int, ...]]], chunk: int = 32,
) -> list[torch.Tensor]:
    """Next-token log-probabilities after ``ids[:p + 1] + prefix`` for each job ``(p, prefix)``.

    With a Hugging Face cache, each branch feeds only its prefix tokens and attends to the
    first ``p + 1`` cached positions (the later ones are masked out); otherwise each branch
    is a full forward pass (right-padded, so padding never reaches the read position).
    """
    out: list[torch.Tensor] = []
    model, device = access.model, access.input_device
    hf, cache = cache if cache is not None else (None, None)
    with model_lock(model), torch.no_grad():
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            width = max(len(prefix) for _, prefix in part)
            if hf is not None:
                n_cached = len(ids)
                batch = copy.deepcopy(cache)
                batch.reorder_cache(torch.zeros(len(part), dtype=torch.long, device=device))
                inputs = torch.zeros(len(part), width, dtype=torch.long, device=device)
                mask = torch.zeros(len(part), n_cached + width, dtype=torch.long, device=device)
                position_ids = torch.zeros(len(part), width, dtype=torch.long, device=device)
                for b, (p, prefix) in enumerate(part):
                    inputs[b, : len(prefix)] = torch.tensor(prefix)
                    mask[b, : p + 1] = 1
                    mask[b, n_cached : n_cached + len(prefix)] = 1
                    position_ids[b] = torch.arange(p + 1, p + 1 + width)
                with warnings.catch_warnings():  # the cache argument's name changes across versions
                    warnings.simplefilter("ignore", FutureWarning)
                    logits = hf(input_ids=inputs, past_key_values=batch, attention_mask=mask,
                                position_ids=position_ids, use_cache=True).logits
                for b, (_, prefix) in enumerate(part):
                    out.append(torch.log_softmax(logits[b, len(prefix) - 1].double(), -1))
                continue
            length = max(p + 1 + len(prefix) for p, prefix in part)
            inputs = torch.zeros(len(part), length, dtype=torch.long, device=device)
            for b, (p, prefix) in enumerate(part):
                row = list(ids[: p + 1]) + list(prefix)
                inputs[b, : len(row)] = torch.tensor(row)
                inputs[b, len(row) :] = row[-1]
            logits = model(inputs)
            for b, (p, prefix) in enumerate(part):
                out.append(torch.log_softmax(logits[b, p + len(prefix)].double(), -1))
    return out


def forecast_distributions(
    access: ModelAccess, ids: list[int], positions: Sequence[int], paths: list[list[int]],
    prefixes: Optional[Sequence[Sequence[int]]] = None, context: Optional[tuple[Any, Any, Any]] = None,
) -> tuple[list[tuple[np.ndarray, float]], list[float]]:
    """Exact distributions over the candidates at each position (one cached pass, batched branches).

    Args:
        access: The model.
        ids: The token ids of the text.
        positions: Token positions whose next value is forecast.
        paths: Token ids writing each candidate (:func:`candidate_paths`).
        prefixes: Per position, tokens of the value already written after it (explaining a
            later token): the distribution is conditioned on them. Default: none.
        context: A ``context_pass`` result to reuse.

    Returns:
        Per position ``(probs, mass)``, and ‖y‖ at each position.
    """
    logp, y_norm, cache = context or context_pass(access, ids)
    prefixes = prefixes or [()] * len(positions)
    # The trie of candidate paths: every proper prefix needs the conditionals after it.
    nodes = sorted({tuple(path[:k]) for path in paths for k in range(1, len(path))}, key=len)
    jobs = [(p, node) for p in sorted(set(positions)) for node in nodes]
    branch = dict(zip(jobs, _branch_logprobs(access, ids, cache, jobs))) if jobs else {}
    results = []
    for p, pre in zip(positions, prefixes):
        pre = tuple(pre)
        logs = np.full(len(paths), -np.inf)
        for i, path in enumerate(paths):
            if tuple(path[: len(pre)]) != pre or len(path) <= len(pre):
                continue  # conditioned on the written prefix: other values are impossible
            total = 0.0
            for k in range(len(pre), len(path)):
                total += float((branch[(p, tuple(path[:k]))] if k else logp[p])[path[k]])
            logs[i] = total
        if not np.isfinite(logs).any():
            raise OptionError(f"No value of the serialized width starts with the tokens {list(pre)}.")
        peak = logs.max()
        weights = np.exp(logs - peak)
        mass = float(np.exp(peak) * weights.sum())
        results.append((weights / weights.sum(), mass))
    return results, [float(y_norm[p]) for p in positions]
