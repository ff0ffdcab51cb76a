"""`ScopeResult`: one scope's token attributions and the prediction they explain."""

from __future__ import annotations

import math

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence, Union

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..views.page import ScopeView

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import DataFileError, OptionError, PositionError, ScopeError
from .base import ViewableResult
from .files import SavedAsJson, file_header, strict_json_value, strip_header

class TokenScore(NamedTuple):
    """One row of :meth:`ScopeResult.top`."""

    position: int
    token: str
    score: float


class HeadScore(NamedTuple):
    """One row of :meth:`ScopeResult.top_heads`."""

    layer: int
    head: int
    score: float


class CellScore(NamedTuple):
    """One row of :meth:`ScopeResult.top_cells`: a site at one (layer[, head], position)."""

    layer: int
    head: Optional[int]
    position: int
    token: str
    score: float


#: Internal maps and their tensor field names.
SITES = ("layer", "attn", "mlp", "head")
# How scores scale (a method declares one; see scopes.declarations.ScoreKind): never mix kinds on one scale.
SCORE_KINDS = ("norm", "quadratic", "kl", "random")
NORMALIZATIONS = ("raw", "scaled")


#: The score kind a method declares, by method name (None: not declared). Results sit below the
#: scopes, so the scopes set this (:func:`set_declared_kinds`); it only fills in a result saved
#: before results stored their kind (a pickle of an earlier version, a dict without the field).
_declared_kind: Callable[[str], Optional[str]] = lambda scope: None


def set_declared_kinds(lookup: Callable[[str], Optional[str]]) -> None:
    """Tell the results how to find a method's declared score kind by its name."""
    global _declared_kind
    _declared_kind = lookup


def _kind_of_unstored(scope: Any) -> str:
    kind = _declared_kind(scope) if isinstance(scope, str) else None
    return kind if kind in SCORE_KINDS else "norm"


def check_normalization(normalization: str) -> None:
    """Raise :class:`OptionError` unless ``normalization`` is one of :data:`NORMALIZATIONS`."""
    if normalization not in NORMALIZATIONS:
        raise OptionError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise OptionError(f"k must be a positive integer (how many entries to return), got {k!r}.")


def _numbers(values: Any, name: str, integers: bool = False) -> None:
    """Refuse anything but (nested) lists of JSON numbers (and None for NaN, unless ``integers``):
    no strings, bools, or integers too large for a float (a 400-digit one overflows)."""
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif integers:
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataFileError(f"Field {name!r} must hold integer token ids only, got {value!r}: write results "
                                    "with save_json() and do not edit their structure.")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                    or isinstance(value, int) and abs(value) >= 2**1023):
            raise DataFileError(f"Field {name!r} must be a (nested) list of numbers, got {str(value)[:60]!r}: write "
                                "results with save_json() and do not edit their structure.")


def _float_tensor(values: Any, name: str) -> Tensor:
    """A float32 tensor from (nested) lists in which None stands for NaN (strict JSON)."""
    _numbers(values, name)
    try:
        return torch.from_numpy(np.array(values, dtype=np.float64)).float()
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataFileError(f"Field {name!r} must be a (nested) list of numbers, got {str(values)[:80]!r}.") from exc


def _optional_float(value: Any, name: str) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, int) and abs(value) >= 2**1023:
        raise DataFileError(f"Field {name!r} must be a number, got {str(value)[:60]!r}.")
    return float(value)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DataFileError(message + " Write results with save_json() and do not edit their structure.")


@dataclass(eq=False)  # == compares saved content (SavedAsJson)
class ScopeResult(ViewableResult, SavedAsJson):
    """Token-level attributions of one Jacobian scope for one explained prediction.

    Attributes:
        scope: ``"semantic"``, ``"temperature"`` or ``"fisher"``.
        scores: One score per prompt token; zero after ``position`` (causality).
        tokens: Prompt token ids (BOS included when the model prepends one).
        str_tokens: Prompt tokens as strings.
        position: The explained position (the prediction of the token after it).
        target: Token whose logit the Semantic scope explains; for Temperature and
            Fisher, the model's top prediction at ``position``.
        target_str: ``target`` as a string.
        target_prob: Probability of ``target`` at ``position``.
        predicted: The model's top prediction at ``position``.
        predicted_str: ``predicted`` as a string.
        predicted_prob: Its probability.
        contrast: For a contrastive Semantic scope, the token subtracted (else None).
        contrast_str: ``contrast`` as a string.
        contrast_prob: Its probability.
        params: The scope's parameters (rank, probe count, ...) and diagnostics such as
            ``y_norm`` (the inverse temperature ‖y‖).
        model_name: Name of the model that produced the result.
        layer_scores: With ``internals=True``: ``[n_layers + 1, pos]``, the scope of the
            residual stream entering each block (row 0 equals ``scores``; the last row is
            the final residual stream).
        attn_scores: ``[n_layers, pos]``, the scope of each block's attention output.
        mlp_scores: ``[n_layers, pos]``, the scope of each block's MLP output.
        head_scores: ``[n_layers, n_heads, pos]``, the scope of each head's output
            (``hook_z``, before ``W_O``).
        internal_norms: Activation norms ‖a‖ at every internal site, same shapes, used by
            the ``"scaled"`` normalization.
        stderr: For a stochastic estimate (Fisher with ``samples=``), the standard error of
            each token's score; None for exact computations.
        score_kind: How the scores scale, from the method's declaration: ``"norm"`` (Semantic,
            Temperature, G×I, IG), ``"quadratic"`` (Fisher), ``"kl"`` or ``"random"``. Stored on
            the result and in its file, so a custom method's result keeps its kind when loaded
            where the method is not registered. Never put two kinds on one colour scale.

    Examples:
        >>> r = tjs.fisher_scope(model, "The capital of France is")
        >>> r.top(3)
        [TokenScore(position=2, token=' capital', score=...), ...]
        >>> df = r.to_dataframe()
    """

    scope: str
    scores: Float[Tensor, " pos"]
    tokens: Int[Tensor, " pos"]
    str_tokens: list[str]
    position: int
    target: int
    target_str: str
    target_prob: float
    predicted: int
    predicted_str: str
    predicted_prob: float
    contrast: Optional[int] = None
    contrast_str: Optional[str] = None
    contrast_prob: Optional[float] = None
    params: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    layer_scores: Optional[Float[Tensor, "n_layers_plus_1 pos"]] = None
    attn_scores: Optional[Float[Tensor, "n_layers pos"]] = None
    mlp_scores: Optional[Float[Tensor, "n_layers pos"]] = None
    head_scores: Optional[Float[Tensor, "n_layers n_heads pos"]] = None
    internal_norms: dict[str, Tensor] = field(default_factory=dict)
    stderr: Optional[Float[Tensor, " pos"]] = None
    score_kind: str = "norm"

    def __post_init__(self) -> None:
        if self.score_kind not in SCORE_KINDS:
            raise OptionError(f"score_kind must be one of {list(SCORE_KINDS)}, got {self.score_kind!r}.")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickle from before score_kind was a field holds none: the class default "norm" would
        # silently turn a Fisher result's quadratic scores into norms. Its method's declaration knows.
        if "score_kind" not in state:
            state = {**state, "score_kind": _kind_of_unstored(state.get("scope"))}
        self.__dict__.update(state)

    @property
    def n_tokens(self) -> int:
        return len(self.str_tokens)

    def top(self, k: int = 5) -> list[TokenScore]:
        """The ``k`` highest-scoring tokens of the explained span (positions up to ``position``), best first.

        Tokens after the explained position cannot influence its prediction (their score is
        0), so they are never listed: near the start of a text fewer than ``k`` come back.
        """
        _check_k(k)
        span = self.scores[: self.position + 1].float()
        k = min(k, span.shape[0])
        values, indices = torch.topk(span, k)
        return [TokenScore(int(i), self.str_tokens[int(i)], float(v)) for v, i in zip(values, indices)]

    def normalized(self) -> Float[Tensor, " pos"]:
        """Scores divided by their sum (a new tensor; ``scores`` is never modified)."""
        total = self.scores.sum()
        return self.scores / total if total > 0 else self.scores.clone()

    # ---- internal maps ---------------------------------------------------------------------

    @property
    def has_internals(self) -> bool:
        return self.layer_scores is not None

    def internal(self, site: str = "layer", normalization: str = "raw") -> Float[Tensor, "n_layers *heads pos"]:
        """One internal map: ``site`` in ``layer``, ``attn``, ``mlp``, ``head``.

        ``normalization="raw"`` is the scope of docs/method.md §3 (``‖v^T ∂y/∂a‖``, or the
        F-weighted sum for Fisher). The residual stream's norm grows with depth, so raw
        deep-layer sensitivities look tiny; ``"scaled"`` multiplies by the activation's own
        norm (squared for the quadratic Fisher), i.e. the sensitivity to a perturbation of
        relative size, which makes layers comparable.
        """
        if site not in SITES:
            raise OptionError(f"site must be one of {SITES}, got {site!r}.")
        check_normalization(normalization)
        if not self.has_internals:
            raise ScopeError("This result has no internal maps: rerun the scope with internals=True.")
        raw: Optional[Tensor] = getattr(self, f"{site}_scores")
        if raw is None:
            raise ScopeError(f"This result has no {site!r} map: rerun the scope with internals=True.")
        if normalization == "raw":
            return raw
        if site not in self.internal_norms:
            raise ScopeError(
                f"This result has no activation norms for site {site!r}, which normalization='scaled' needs: "
                "use normalization='raw', or rerun the scope with internals=True."
            )
        power = 2 if self.score_kind == "quadratic" else 1
        scaled: Tensor = raw * self.internal_norms[site] ** power
        return scaled

    def aggregate(self, values: Tensor, dim: int = -1) -> Tensor:
        """Combine scores over positions as the scope itself would: quadratic scores add;
        norm scores combine as a root-sum-of-squares (the norm over all positions at once)."""
        if self.score_kind == "quadratic":
            return values.sum(dim=dim)
        return values.pow(2).sum(dim=dim).sqrt()

    def top_heads(self, k: int = 5, normalization: str = "raw", position: Optional[int] = None) -> list[HeadScore]:
        """Heads with the largest score over all positions (or at one ``position``)."""
        _check_k(k)
        heads = self.internal("head", normalization)
        if position is not None:
            self._check_position(position)
        per_head = heads[..., position] if position is not None else self.aggregate(heads)
        values, flat = torch.topk(per_head.flatten(), min(k, per_head.numel()))
        n_heads = per_head.shape[1]
        return [HeadScore(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, flat)]

    def top_layers(self, k: int = 5, site: str = "layer", normalization: str = "raw") -> list[tuple[int, float]]:
        """``(layer, score)`` of the layers with the largest score over all positions."""
        _check_k(k)
        per_layer = self.aggregate(self.internal(site, normalization))
        values, idx = torch.topk(per_layer, min(k, per_layer.numel()))
        return [(int(i), float(v)) for v, i in zip(values, idx)]

    def top_cells(self, k: int = 5, site: str = "layer", normalization: str = "scaled") -> list[CellScore]:
        """The ``k`` largest (layer[, head], position) cells of one internal map."""
        _check_k(k)
        grid = self.internal(site, normalization)
        values, flat = torch.topk(grid.flatten(), min(k, grid.numel()))
        cells = []
        for v, i in zip(values, flat):
            index = [int(x) for x in torch.unravel_index(i, grid.shape)]
            layer, head, position = (index[0], index[1], index[2]) if site == "head" else (index[0], None, index[1])
            cells.append(CellScore(layer, head, position, self.str_tokens[position], float(v)))
        return cells

    def _check_position(self, position: int) -> None:
        n = self.n_tokens
        if isinstance(position, bool) or not isinstance(position, int) or not -n <= position < n:
            raise PositionError(f"position must be an integer in [0, {n - 1}] (a token index), got {position!r}.")

    def at_position(self, position: int, normalization: str = "raw") -> dict[str, Tensor]:
        """Every internal map at one token position: ``{site: [n_layers(+1)] or [n_layers, n_heads]}``."""
        self._check_position(position)
        return {site: self.internal(site, normalization)[..., position] for site in SITES}

    def layer_summary(self, normalization: str = "raw") -> "pd.DataFrame":
        """A per-layer DataFrame: residual, attention and MLP totals, best position and head.

        ``top_head`` is an integer column (pandas ``Int64``; missing on the ``"final"`` row,
        which has no heads).
        """
        import pandas as pd

        resid = self.internal("layer", normalization)
        attn, mlp = self.internal("attn", normalization), self.internal("mlp", normalization)
        heads = self.aggregate(self.internal("head", normalization))
        rows = []
        for layer in range(resid.shape[0]):
            inside = layer < attn.shape[0]
            best = int(resid[layer].argmax())
            rows.append(
                {
                    "layer": layer if inside else "final",
                    "resid": float(self.aggregate(resid[layer])),
                    "attn": float(self.aggregate(attn[layer])) if inside else float("nan"),
                    "mlp": float(self.aggregate(mlp[layer])) if inside else float("nan"),
                    "top_position": best,
                    "top_token": self.str_tokens[best],
                    "top_head": int(heads[layer].argmax()) if inside else None,
                }
            )
        summary = pd.DataFrame(rows)
        # Head indices are integers; the nullable Int64 keeps them so despite the final row's None.
        summary["top_head"] = summary["top_head"].astype("Int64")
        return summary

    def _internal_rows(self) -> list[dict[str, Any]]:
        rows = []
        for site in SITES:
            raw, scaled = self.internal(site, "raw"), self.internal(site, "scaled")
            grid = raw if site == "head" else raw[:, None, :]
            grid_scaled = scaled if site == "head" else scaled[:, None, :]
            for index in torch.cartesian_prod(*[torch.arange(n) for n in grid.shape]).tolist():
                layer, head, position = index
                rows.append(
                    {
                        "scope": self.scope,
                        "site": site,
                        "layer": layer,
                        "head": head if site == "head" else None,
                        "position": position,
                        "token": self.str_tokens[position],
                        "score": float(grid[layer, head, position]),
                        "score_scaled": float(grid_scaled[layer, head, position]),
                    }
                )
        return rows

    def to_dataframe(self, internals: bool = False) -> "pd.DataFrame":
        """One row per token: position, token, token_id, score, share, rank, explained.

        With ``internals=True``: the internal maps in long format, one row per
        (site, layer, head, position) with columns scope, site, layer, head, position,
        token, score (raw) and score_scaled.
        """
        import pandas as pd

        if internals:
            if not self.has_internals:
                raise ScopeError("This result has no internal maps: rerun the scope with internals=True.")
            return pd.DataFrame(self._internal_rows())

        scores = self.scores.float().cpu()
        order = torch.argsort(scores, descending=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(1, len(order) + 1)
        return pd.DataFrame(
            {
                "scope": self.scope,
                "position": range(self.n_tokens),
                "token": self.str_tokens,
                "token_id": self.tokens.cpu().tolist(),
                "score": scores.tolist(),
                "share": self.normalized().float().cpu().tolist(),
                "rank": ranks.tolist(),
                "explained": [i == self.position for i in range(self.n_tokens)],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything in the result.

        Tensors become lists and every non-finite float (NaN, ±inf) becomes None, so that
        the dict is standard JSON; :meth:`from_dict` reads None back as NaN.
        """
        data: dict[str, Any] = strict_json_value(
            {
                **file_header("ScopeResult"),
                "scope": self.scope,
                "score_kind": self.score_kind,
                "model_name": self.model_name,
                "position": self.position,
                "target": self.target,
                "target_str": self.target_str,
                "target_prob": self.target_prob,
                "predicted": self.predicted,
                "predicted_str": self.predicted_str,
                "predicted_prob": self.predicted_prob,
                "contrast": self.contrast,
                "contrast_str": self.contrast_str,
                "contrast_prob": self.contrast_prob,
                "params": self.params,
                "tokens": self.tokens.cpu().tolist(),
                "str_tokens": self.str_tokens,
                "scores": self.scores.float().cpu().tolist(),
                **{
                    f"{site}_scores": getattr(self, f"{site}_scores").tolist()
                    for site in SITES
                    if getattr(self, f"{site}_scores") is not None
                },
                "internal_norms": {site: t.tolist() for site, t in self.internal_norms.items()},
                "stderr": None if self.stderr is None else self.stderr.tolist(),
            }
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScopeResult":
        """Inverse of :meth:`to_dict` (None in a float field or tensor reads back as NaN).

        Raises:
            DataFileError: A field is missing, unknown, or of the wrong type or length.
        """
        data = strip_header(data, "ScopeResult")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, f"Unknown ScopeResult field(s) {unknown}.")
        required = ["scope", "scores", "tokens", "str_tokens", "position", "target", "target_str",
                    "target_prob", "predicted", "predicted_str", "predicted_prob"]
        missing = [name for name in required if name not in data]
        _require(not missing, f"Missing ScopeResult field(s) {missing}.")
        if "score_kind" not in data:  # a dict written by hand or by another tool: the declaration's kind
            data["score_kind"] = _kind_of_unstored(data["scope"])
        _require(data.get("score_kind", "norm") in SCORE_KINDS,
                 f"Field 'score_kind' must be one of {list(SCORE_KINDS)}, got {data.get('score_kind')!r}.")
        for name in ("scope", "target_str", "predicted_str", "model_name"):
            _require(isinstance(data.get(name, ""), str), f"Field {name!r} must be a string, got {data.get(name)!r}.")
        _require(data.get("contrast_str") is None or isinstance(data["contrast_str"], str),
                 f"Field 'contrast_str' must be a string or null, got {data.get('contrast_str')!r}.")
        for name in ("position", "target", "predicted", "contrast"):
            value = data.get(name)
            _require((value is None and name == "contrast") or (isinstance(value, int) and not isinstance(value, bool)),
                     f"Field {name!r} must be an integer, got {value!r}.")
        str_tokens = data["str_tokens"]
        _require(isinstance(str_tokens, list) and all(isinstance(t, str) for t in str_tokens),
                 "Field 'str_tokens' must be a list of strings.")
        _require(isinstance(data.get("params", {}), dict), "Field 'params' must be an object.")
        data["target_prob"] = _optional_float(data["target_prob"], "target_prob")
        data["predicted_prob"] = _optional_float(data["predicted_prob"], "predicted_prob")
        if data.get("contrast") is not None or data.get("contrast_prob") is not None:
            data["contrast_prob"] = _optional_float(data.get("contrast_prob"), "contrast_prob")
        data["scores"] = _float_tensor(data["scores"], "scores")
        for name in ("predicted_prob", "target_prob", "contrast_prob"):
            value = data.get(name)
            _require(value is None or math.isnan(value) or 0.0 <= value <= 1.0,
                     f"Field {name!r} must be a probability in [0, 1], got {value!r}.")
        try:
            ids: Any = data["tokens"]
            if not isinstance(ids, list):
                raise TypeError(f"not a list: {str(ids)[:40]!r}")
            _numbers(ids, "tokens", integers=True)  # a float id would be truncated
            data["tokens"] = torch.tensor(ids, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise DataFileError(f"Field 'tokens' must be a list of integer token ids ({exc}).") from exc
        n = len(str_tokens)
        _require(data["scores"].shape == (n,) and data["tokens"].shape == (n,),
                 f"'scores' {tuple(data['scores'].shape)}, 'tokens' {tuple(data['tokens'].shape)} and "
                 f"'str_tokens' ({n},) must have one entry per token.")
        _require(0 <= data["position"] < n, f"Field 'position' ({data['position']}) must be in [0, {n - 1}].")
        for site in SITES:
            if data.get(f"{site}_scores") is not None:
                data[f"{site}_scores"] = _float_tensor(data[f"{site}_scores"], f"{site}_scores")
        norms = data.get("internal_norms") or {}
        _require(isinstance(norms, dict) and set(norms) <= set(SITES),
                 f"Field 'internal_norms' must map sites among {SITES} to lists of numbers.")
        data["internal_norms"] = {k: _float_tensor(v, f"internal_norms.{k}") for k, v in norms.items()}
        if data.get("stderr") is not None:
            data["stderr"] = _float_tensor(data["stderr"], "stderr")
        # Every map has one entry per token (a hand-edited file must not break the views later).
        shaped = {f"{site}_scores": data.get(f"{site}_scores") for site in SITES}
        shaped.update({f"internal_norms.{k}": v for k, v in data["internal_norms"].items()})
        for name, tensor in {**shaped, "stderr": data.get("stderr")}.items():
            ndim = 1 if name == "stderr" else 3 if name.endswith("head") or name == "head_scores" else 2
            _require(tensor is None or (tensor.ndim == ndim and tensor.shape[-1] == n),
                     f"Field {name!r} must have {ndim} dimension(s), the last with one entry per token ({n}).")
        # Norms scale their own site's map: one norm per entry of it (a short stack would be broadcast).
        for site, norm in data["internal_norms"].items():
            scores = data.get(f"{site}_scores")
            _require(scores is not None and tuple(norm.shape) == tuple(scores.shape),
                     f"Field 'internal_norms.{site}' {tuple(norm.shape)} must have the shape of '{site}_scores' "
                     f"{None if scores is None else tuple(scores.shape)}.")
        # The internal maps come together, over one stack of layers (the views read all four).
        rows = [None if data.get(f"{site}_scores") is None else int(data[f"{site}_scores"].shape[0]) for site in SITES]
        _require(rows == [None] * 4 or (None not in rows and rows[0] == rows[1] + 1 == rows[2] + 1 == rows[3] + 1),  # type: ignore[operator]
                 "Fields 'layer_scores' (n_layers + 1 rows), 'attn_scores', 'mlp_scores' and "
                 "'head_scores' (n_layers rows each) are all present or all absent.")
        return cls(**data)

    # ---- views ---------------------------------------------------------------------------

    def show(self, *parts: Union[str, Sequence[str]], normalization: str = "scaled") -> "ScopeView":
        """A CircuitsVis view: the token colouring (``"tokens"``) and, with internals, the
        layer view (``"layers"``) and head view (``"heads"``); name parts (or pass a list of
        them) to show only those.

        In a notebook, ``r.show()`` as a cell's last line displays it (no network needed);
        the result itself also displays this way. ``normalization`` applies to internal maps.

        Examples:
            >>> r = tjs.semantic_scope(model, "The capital of France is", internals=True)
            >>> view = r.show("heads")  # only the layer x head view
            >>> view = r.show(["tokens", "heads"])
            >>> path = r.show("tokens", "layers", normalization="raw").save("view.html")

        Raises:
            OptionError: An unknown part or normalization.
            ScopeError: ``"layers"``/``"heads"`` of a result computed without ``internals=True``.
        """
        from ..views.html import flatten_parts, show

        return show(self, normalization, flatten_parts(parts) or None)

    def save_html(self, path: Union[str, Path], normalization: str = "scaled") -> Path:
        """Write one self-contained HTML file (all JavaScript inlined, nothing fetched)."""
        return self.show(normalization=normalization).save(path)

    def plot(self, normalization: str = "scaled") -> "Figure":
        """A static matplotlib figure for papers (needs the ``plot`` extra)."""
        from ..views.static import plot

        return plot(self, normalization)

    def save_png(self, path: Union[str, Path], normalization: str = "scaled", dpi: int = 150) -> Path:
        """Write :meth:`plot` as a PNG."""
        from ..views.static import save_png

        return save_png(self, path, normalization, dpi)

    def __repr__(self) -> str:
        best = ", ".join(f"{t.token!r}:{t.score:.3g}" for t in self.top(3))
        what = f"{self.target_str!r}"
        if self.contrast_str is not None:
            what += f" vs {self.contrast_str!r}"
        return (
            f"ScopeResult(scope={self.scope!r}, n_tokens={self.n_tokens}, position={self.position}, "
            f"target={what} p={self.target_prob:.3f}, top=[{best}])"
        )
