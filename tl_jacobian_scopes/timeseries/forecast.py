"""Value-level scopes of in-context forecasts, and the model's exact forecast distribution.

A serialized series ``"51,53,55,"`` is tokenized once with character offsets; each token is
mapped to the value whose digits it covers (separators and BOS are kept apart), and a value's
score combines its tokens' scores as the scope combines positions (docs/method.md §3.4):
root-sum-of-squares for norm scores (Semantic, Temperature), a sum for quadratic ones
(Fisher). This works for any fast tokenizer: one token per digit (SmolLM2), up to three
digits per token (Llama-3), or whole numbers as single tokens.

This module holds :func:`forecast_scope`; the jobs it calls live by job: :mod:`.tokens`
(tokens → values), :mod:`.distribution` (the exact forecast distribution) and :mod:`.results`
(the result types); the HF twin of a bridge is :mod:`tl_jacobian_scopes.models.hf_twin`.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import OptionError, PromptError
from ..models.access import ModelAccess
from ..results.scope_result import ScopeResult
from ..scopes.api import resolve_scope
from ..models.hf_twin import hf_twin
from .serialize import Serialized, serialize
# Each job in its own module; the names are re-exported here, where they lived before the split.
from .distribution import Forecast as Forecast, candidate_paths as candidate_paths
from .distribution import context_pass, forecast_distributions as forecast_distributions
from .results import ForecastMatrix as ForecastMatrix, ForecastResult as ForecastResult
from .tokens import TokenMap as TokenMap, aggregate_values as aggregate_values, token_map as token_map


#: Scopes a forecast can be explained with.
FORECAST_SCOPES = ("temperature", "semantic", "fisher")


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
        context = context_pass(access, ids)
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
        context = context or context_pass(access, ids)
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


# The HF twin lived here as a private helper before it moved to models/ (kept for one release).
_hf_model = hf_twin
