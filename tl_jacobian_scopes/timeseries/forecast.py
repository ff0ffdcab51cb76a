"""Value-level scopes of in-context forecasts, and the model's exact forecast distribution.

A serialized series ``"51,53,55,"`` is tokenized once with character offsets; each token is
mapped to the value whose digits it covers (separators and BOS are kept apart), and a value's
score combines its tokens' scores as the scope combines positions (docs/method.md §3.4):
root-sum-of-squares for norm scores (Semantic, Temperature), a sum for quadratic ones
(Fisher). This works for any fast tokenizer: one token per digit (SmolLM2), up to three
digits per token (Llama-3), or whole numbers as single tokens.
"""

from __future__ import annotations

import numbers

import copy
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

if TYPE_CHECKING:
    from ..views.page import ScopeView

import numpy as np
import torch

from ..errors import OptionError, PromptError
from ..models.access import ModelAccess, model_lock
from ..results.base import ResultRows, ViewableResult
from ..results.scope_result import ScopeResult
from ..scopes.api import resolve_scope
from .serialize import Serialized, serialize

#: Scopes a forecast can be explained with.
FORECAST_SCOPES = ("temperature", "semantic", "fisher")


# ---- tokens <-> values ------------------------------------------------------------------------


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


def _tokenizer(access: ModelAccess) -> Any:
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
    tok = _tokenizer(access)
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


# ---- the forecast distribution ----------------------------------------------------------------


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
    tok = _tokenizer(access)
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


def _hf_model(model: Any) -> Any:
    """A plain Hugging Face model sharing the weights of a TransformerBridge's model, or None.

    The key-value cache that makes the forecast's branches cheap needs plain HF attention;
    a bridge wraps the HF modules in hooked components, so the same architecture is rebuilt
    (on the meta device: no copy, no initialisation) and given the bridge's own parameter
    tensors (``assign=True``: shared, so always in sync). Anything else (a model split over
    devices included) returns None and the branches run as full forward passes.
    """
    hf = getattr(model, "original_model", None)
    try:
        from transformers import AutoModelForCausalLM, PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if not isinstance(hf, PreTrainedModel):
        return None
    if len(set(map(str, (getattr(hf, "hf_device_map", None) or {}).values()))) > 1:
        return None  # split over devices: the rebuilt model would lack Accelerate's device-moving hooks
    try:
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(hf.config)  # type: ignore[no-untyped-call]
        wanted = plain.state_dict()
        state = {}
        for key, value in hf.state_dict(keep_vars=True).items():
            key = key.replace("._original_component", "")
            if key in wanted and key not in state and wanted[key].shape == value.shape:
                state[key] = value
        if set(state) != set(wanted):
            return None
        plain.load_state_dict(state, assign=True)
        # Non-persistent buffers (rotary frequencies) are not in a state dict: take the bridge's.
        buffers = {k.replace("._original_component", ""): b for k, b in hf.named_buffers()}
        for name, buf in list(plain.named_buffers()):
            if buf.is_meta:
                if name not in buffers or buffers[name].shape != buf.shape:
                    return None
                owner_name, _, attr = name.rpartition(".")
                owner = plain.get_submodule(owner_name) if owner_name else plain
                owner._buffers[attr] = buffers[name]
        if any(t.is_meta for t in list(plain.parameters()) + list(plain.buffers())):
            return None
        head, plain_head = hf.get_output_embeddings(), plain.get_output_embeddings()  # type: ignore[no-untyped-call]
        bias = getattr(head, "bias", None)
        if bias is not None and getattr(plain_head, "bias", None) is None and bool(bias.detach().abs().max() > 0):
            return None  # a bias the plain model would drop
    except Exception:  # an architecture we cannot rebuild: fall back to full forward passes
        return None
    return plain.eval()


def _context_pass(access: ModelAccess, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Log-probabilities at every position ``[pos, vocab]``, ‖y‖ per position, and a KV cache (or None)."""
    model = access.model
    tokens = torch.tensor([ids], device=access.input_device)
    hf = _hf_model(model)
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
        context: A ``_context_pass`` result to reuse.

    Returns:
        Per position ``(probs, mass)``, and ‖y‖ at each position.
    """
    logp, y_norm, cache = context or _context_pass(access, ids)
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


# ---- results ----------------------------------------------------------------------------------


@dataclass
class ForecastResult(ViewableResult):
    """A scope of one forecast step, at the level of the series' values.

    Attributes:
        series: The serialized series.
        step: Index of the forecast value (``len(series)``: the value after the series).
        scope: ``"temperature"``, ``"semantic"`` or ``"fisher"``.
        result: The token-level :class:`ScopeResult` it was built from.
        values: The context values (as written), ``series.values[:step]``.
        value_scores: One score per context value (its tokens combined, module docstring).
        lags: ``step - index``: 1 for the most recent value.
        sep_scores: Per context value, the combined score of its separator token(s).
        bos_score: The BOS token's score (0 without BOS).
        forecast: The model's distribution over the forecast value (None if not computed).
        token: Which token of the forecast value is explained (0: its first).
    """

    series: Serialized
    step: int
    scope: str
    result: ScopeResult
    values: np.ndarray
    value_scores: np.ndarray
    lags: np.ndarray
    sep_scores: np.ndarray
    bos_score: float
    forecast: Optional[Forecast] = None
    token: int = 0

    @property
    def score_kind(self) -> str:
        return self.result.score_kind

    @property
    def y_norm(self) -> Optional[float]:
        """‖y‖ at the explained position (Temperature's effective inverse temperature)."""
        value = self.result.params.get("y_norm")
        if value is None and self.forecast is not None:
            value = self.forecast.y_norm
        return None if value is None else float(value)

    @property
    def true_value(self) -> Optional[int]:
        return int(self.series.values[self.step]) if self.step < len(self.series) else None

    def to_dataframe(self) -> Any:
        """One row per context value: index, lag, value (written and in units), score, separator score."""
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        idx = np.arange(len(self.values))
        return pd.DataFrame({
            "index": idx, "lag": self.lags, "value": self.values, "value_units": self.series.decode(self.values),
            "score": self.value_scores, "sep_score": self.sep_scores,
        })

    def mechanism(self, dim: int = 3, recency: int = 5, k: int = 3) -> Any:
        """Parroting-versus-recency statistics of this step (docs/method.md §8); see
        :func:`tl_jacobian_scopes.timeseries.mechanism.mechanism_stats`."""
        from .mechanism import mechanism_stats

        return mechanism_stats(self.series.values[: self.step].astype(np.float64), self.value_scores,
                               dim=dim, recency=recency, k=k, forecast=self.forecast)

    def plot(self) -> Any:
        """The paper's figure: influence bars over the context with the series on a second
        axis and the forecast marked, and the forecast distribution with the true value."""
        from .views import plot_forecast

        return plot_forecast(self)

    def show(self) -> "ScopeView":
        """A CircuitsVis view: the values coloured by influence, with the forecast."""
        from .views import show_forecast

        return show_forecast(self)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "scope": self.scope, "token": self.token, "value_scores": self.value_scores.tolist(),
                "sep_scores": self.sep_scores.tolist(), "bos_score": self.bos_score, "y_norm": self.y_norm,
                "forecast": None if self.forecast is None else self.forecast.to_dict()}


@dataclass
class ForecastMatrix(ResultRows[ForecastResult], ViewableResult):
    """Many forecast steps of one series (``steps="all"`` or a list): steps × values."""

    steps_results: list[ForecastResult] = field(default_factory=list)

    def _rows(self) -> list[ForecastResult]:
        return self.steps_results

    @property
    def series(self) -> Serialized:
        return self.steps_results[0].series

    @property
    def scope(self) -> str:
        return self.steps_results[0].scope

    @property
    def steps(self) -> list[int]:
        return [r.step for r in self.steps_results]

    @property
    def value_scores(self) -> np.ndarray:
        """``[n_steps, n_values]``: row i holds step i's value scores (zero from the step on)."""
        out = np.zeros((len(self), len(self.series)))
        for i, r in enumerate(self.steps_results):
            out[i, : len(r.value_scores)] = r.value_scores
        return out

    def by_lag(self, max_lag: Optional[int] = None) -> np.ndarray:
        """``[n_steps, max_lag]``: column ``l - 1`` holds the score at lag ``l`` (NaN where none)."""
        max_lag = max_lag or max(r.step for r in self.steps_results)
        out = np.full((len(self), max_lag), np.nan)
        for i, r in enumerate(self.steps_results):
            n = min(max_lag, len(r.value_scores))
            out[i, :n] = r.value_scores[::-1][:n]
        return out

    def ynorm_std_correlation(self) -> float:
        """Spearman correlation between ‖y‖ and the forecast's std across the steps."""
        from .mechanism import spearman

        pairs = [(r.y_norm, r.forecast.std) for r in self.steps_results if r.forecast is not None and r.y_norm is not None]
        if len(pairs) < 3:
            return float("nan")
        a, b = np.array(pairs).T
        return spearman(a, b)

    def mechanism(self, dim: int = 3, recency: int = 5, k: int = 3) -> Any:
        """One row of mechanism statistics per step (steps too short for the embedding are skipped)."""
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        rows = []
        for r in self.steps_results:
            if r.step < dim + recency + 3:
                continue
            rows.append({"step": r.step, **r.mechanism(dim=dim, recency=recency, k=k).to_dict()})
        return pd.DataFrame(rows)

    def to_dataframe(self) -> Any:
        """One row per (step, context value)."""
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        frames = [r.to_dataframe().assign(step=r.step) for r in self.steps_results]
        return pd.concat(frames, ignore_index=True)

    def plot(self) -> Any:
        """Steps × lag heatmap of the value scores."""
        from .views import plot_matrix

        return plot_matrix(self)

    def show(self) -> "ScopeView":
        """A CircuitsVis view: the steps × values heatmap."""
        from .views import show_matrix

        return show_matrix(self)


# ---- the entry point --------------------------------------------------------------------------


def _resolve_steps(steps: Any, n: int, min_step: int) -> list[int]:
    if steps is None:
        return [n]
    if isinstance(steps, str):
        if steps != "all":
            raise OptionError(f"steps must be None, 'all' or a list of value indices, got {steps!r}.")
        if n <= min_step:
            raise PromptError(f"steps='all' needs more than {min_step} values; the series has {n}.")
        return list(range(min_step, n))
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = [steps]
    try:
        out = list(steps)
    except TypeError as exc:
        raise OptionError(f"steps must be None, 'all' or a list of value indices, got {steps!r}.") from exc
    if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in out):
        raise OptionError(f"steps must be integer value indices (a float such as 1.5 is not one), got {steps!r}.")
    out = [int(x) for x in out]
    bad = [s for s in out if not 1 <= s <= n]
    if bad or not out:
        raise OptionError(
            f"steps are indices of forecast values in 1..{n} (a step i explains the forecast of value i from "
            f"values 0..i-1; {n} is the value after the series), got {bad or out}."
        )
    return out


def forecast_scope(
    model: Any,
    series: Union[Serialized, Sequence[float], np.ndarray, str],
    scope: str = "temperature",
    steps: Union[None, str, Sequence[int]] = None,
    *,
    digits: int = 2,
    sep: str = ",",
    token: int = 0,
    distribution: bool = True,
    min_step: int = 8,
    batch_size: int = 16,
    **scope_options: Any,
) -> Union[ForecastResult, ForecastMatrix]:
    """Explain an in-context forecast with a scope, one score per past value.

    The explained prediction is the next value's first token (its leading digit on a
    digit-splitting tokenizer) at the separator that precedes it. ``token=k`` explains its
    token ``k`` instead, teacher-forced on the value's first ``k`` tokens (the true ones
    inside the series; the forecast's most probable ones after its end). Temperature then
    explains the confidence ‖y‖ of that digit given the earlier ones: for the leading digit
    the coarse uncertainty, for later digits the finer one within the chosen range.

    Args:
        model: A TransformerLens model with a fast tokenizer.
        series: A :class:`Serialized` series, a list/array of numbers (serialized with
            ``digits``), or a string of separator-joined integers.
        scope: ``"temperature"`` (default, as in the paper), ``"semantic"`` (the top
            predicted token's logit) or ``"fisher"``.
        steps: ``None``: forecast the value after the series. ``"all"``: every value from
            ``min_step`` on, teacher-forced. A list of value indices ``i`` (the forecast of
            value ``i`` from values ``0..i-1``; ``len(series)`` is the value after the end).
        digits: Digits per value when serializing a list of numbers.
        sep: Separator between values when serializing a list of numbers.
        token: Which token of the forecast value is explained (0: the first).
        distribution: Also compute the exact forecast distribution (``.forecast``).
        min_step: First step of ``steps="all"``.
        batch_size: Passed to the scope.
        **scope_options: The scope's own options (e.g. ``rank=None`` for Fisher).

    Returns:
        A :class:`ForecastResult` for ``steps=None``, else a :class:`ForecastMatrix`.

    Raises:
        PromptError: Non-finite values, a malformed string, a series longer than the context.
        OptionError: An unknown scope or step, values that do not fit the digits, a tokenizer
            without offsets.

    Examples:
        >>> from tl_jacobian_scopes import timeseries as ts
        >>> r = ts.forecast_scope(model, ts.serialize(ts.lorenz(180)))
        >>> scores, mean, std = r.value_scores, r.forecast.mean, r.forecast.std
    """
    if scope not in FORECAST_SCOPES:
        import difflib

        close = difflib.get_close_matches(str(scope), FORECAST_SCOPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"scope must be one of {list(FORECAST_SCOPES)}, got {scope!r}.{hint}")
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise OptionError(f"token must be an int ≥ 0 (which token of the forecast value to explain), got {token!r}.")
    if isinstance(min_step, bool) or not isinstance(min_step, numbers.Integral) or min_step < 1:
        # Step 0 would forecast value 0 from nothing: the position before it is -1 without BOS.
        raise OptionError(f"min_step must be an int ≥ 1 (the first value forecast from the values before it), "
                          f"got {min_step!r}.")
    s = serialize(series, digits=digits, sep=sep)
    access = ModelAccess(model)
    tmap = token_map(access, s, max_tokens=access.n_ctx)
    n = len(s)
    wanted = _resolve_steps(steps, n, min_step)
    paths = candidate_paths(access, s.digits, s.sep) if (distribution or token) else None
    ids = list(tmap.ids)
    prefixes: list[tuple[int, ...]] = []
    positions = []  # explained token positions
    starts = []  # positions that precede each forecast value (where its distribution starts)
    context = None
    for step in wanted:
        if step < n:
            first, last = int(tmap.first[step]), int(tmap.last[step])
            if token > last - first:
                raise OptionError(f"token={token}, but value {step} is written with {last - first + 1} token(s).")
            positions.append(first - 1 + token)
            starts.append(first - 1)
            prefixes.append(tuple(ids[first : first + token]))
        else:
            positions.append(len(ids) - 1)
            starts.append(len(ids) - 1)
            prefixes.append(())
    if token and n in wanted:
        # After the series' end, condition on the most probable value's first tokens.
        context = _context_pass(access, ids)
        assert paths is not None  # computed whenever token > 0
        after_end, _norms = forecast_distributions(access, ids, [len(ids) - 1], paths, context=context)
        mode_path = paths[int(np.argmax(after_end[0][0]))]
        if token >= len(mode_path):
            raise OptionError(f"token={token}, but the forecast's most probable value has {len(mode_path)} token(s).")
        ids = ids + mode_path[:token]
        context = None
        positions = [len(ids) - 1 if step == n else p for step, p in zip(wanted, positions)]
        prefixes = [tuple(mode_path[:token]) if step == n else pre for step, pre in zip(wanted, prefixes)]
    if len(ids) + (max(len(p) for p in paths) if paths else 0) > access.n_ctx:
        raise PromptError(
            f"The series is {len(ids)} tokens, and with the forecast more than the model's context of {access.n_ctx}: "
            f"pass fewer values (e.g. series[-{max(1, n * access.n_ctx // max(len(ids), 1) - 2)}:]) or fewer digits."
        )
    fn = resolve_scope(scope)
    if steps is None:
        raw = [fn(model, ids, position=positions[0], batch_size=batch_size, **scope_options)]
    else:
        raw = list(fn(model, ids, positions=positions, batch_size=batch_size, **scope_options))
    forecasts: list[Optional[Forecast]] = [None] * len(wanted)
    if distribution and paths is not None:
        context = context or _context_pass(access, ids)
        dists, _ = forecast_distributions(access, ids, starts, paths, prefixes=prefixes, context=context)
        norms = [float(context[1][p]) for p in positions]  # ‖y‖ at the explained position
        for i, ((probs, mass), y_norm) in enumerate(zip(dists, norms)):
            step = wanted[i]
            true = int(s.values[step]) if step < n else None
            forecasts[i] = Forecast(np.arange(len(paths)), probs, mass, s.offset, s.scale, true, y_norm)
    out = [_value_result(s, tmap, step, scope, res, fc, token) for step, res, fc in zip(wanted, raw, forecasts)]
    return out[0] if steps is None else ForecastMatrix(out)


def _value_result(s: Serialized, tmap: TokenMap, step: int, scope: str, res: ScopeResult,
                  forecast: Optional[Forecast], token: int) -> ForecastResult:
    scores = res.scores.double().numpy()[: len(tmap.token_value)]
    kind = res.score_kind
    owner = np.where(tmap.token_value < step, tmap.token_value, -1)
    value_scores = aggregate_values(scores, owner, step, kind)
    sep_owner = np.where((tmap.token_sep >= 0) & (tmap.token_sep < step), tmap.token_sep, -1)
    sep_scores = aggregate_values(scores, sep_owner, step, kind)
    bos = float(scores[0]) if tmap.bos else 0.0
    return ForecastResult(s, step, scope, res, s.values[:step].copy(), value_scores, step - np.arange(step),
                          sep_scores, bos, forecast, token)
