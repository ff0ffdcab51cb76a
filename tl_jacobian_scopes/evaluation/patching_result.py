"""`PatchingResult`: a labelled patching map (real activation patching or its attribution estimate)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from ..views.page import ScopeView

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import DataFileError, OptionError
from ..results.base import ViewableResult
from ..results.files import SavedAsJson, file_header, register_kind, strict_json_value, strip_header
from ..results.scope_result import _float_tensor, _optional_float, _require

#: What the cells of each site are: residual stream (``blocks.L.hook_resid_pre``) cells at
#: one position, or one head's output (``blocks.L.attn.hook_z``) at every position.
PATCHING_SITES = ("resid_pre", "head")
RESTORED = "fraction of the logit difference restored"
ESTIMATED = "attribution-patching estimate of the fraction of the logit difference restored"
_RESTORES_COLOR, _HARMS_COLOR = "#1f77b4", "#d62728"


class PatchingCell(NamedTuple):
    """One row of :meth:`PatchingResult.top`: a layer and a position (residual sites) or a head."""

    layer: int
    head: Optional[int]
    position: Optional[int]
    label: str
    value: float


def cell_label(row_label: str, col_label: str, site: str) -> str:
    """``"L5H3"`` for a head, ``"L5 4:' France'"`` for a residual cell."""
    return f"{row_label}{col_label}" if site == "head" else f"{row_label} {col_label}"


@dataclass(eq=False)  # == compares saved content (SavedAsJson)
class PatchingResult(ViewableResult, SavedAsJson):
    """A layer x position or layer x head patching map with everything needed to read it.

    Returned by :func:`~tl_jacobian_scopes.patching.patching_map`,
    :func:`~tl_jacobian_scopes.patching.residual_patching_map` and
    :func:`~tl_jacobian_scopes.patching.attribution_patching_map`. The tensor is ``values``;
    ``result[i, j]``, ``result.shape`` and ``numpy.asarray(result)`` read it directly.

    Attributes:
        values: ``[n_layers, pos]`` (``site="resid_pre"``) or ``[n_layers, n_heads]`` (``site="head"``).
        metric: What a value means, e.g. ``"fraction of the logit difference restored"``
            (1 = the patch restores the clean behaviour, 0 = nothing, < 0 = it moves away).
        method: ``"activation patching"`` or ``"attribution patching"``.
        site: ``"resid_pre"`` (one cell = one layer's residual stream at one position) or
            ``"head"`` (one cell = one head's ``hook_z`` at every position).
        row_labels: ``["L0", "L1", ...]``.
        col_labels: ``"i:token"`` per position (clean prompt's tokens) or ``"H0", "H1", ...``.
        clean_str_tokens, corrupted_str_tokens: The two prompts as tokens.
        answer_str, wrong_str: The tokens of the logit difference ``z[answer] - z[wrong]``.
        ld_clean, ld_corrupted: That logit difference on each prompt.
        model_name: The model that produced the map.

    Examples:
        >>> clean = "When Mary and John went to the store, John gave a drink to"
        >>> corrupted = "When Mary and John went to the store, Mary gave a drink to"
        >>> heads = tjs.patching.attribution_patching_map(model, clean, corrupted, " Mary", " John", site="head")
        >>> heads.top(3)
        [PatchingCell(layer=23, head=3, position=None, label='L23H3', value=...), ...]
        >>> df = heads.to_dataframe()
    """

    values: Float[Tensor, "n_layers width"]
    metric: str
    method: str
    site: str
    row_labels: list[str]
    col_labels: list[str]
    clean_str_tokens: list[str]
    corrupted_str_tokens: list[str]
    answer_str: str
    wrong_str: str
    ld_clean: float
    ld_corrupted: float
    model_name: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.site not in PATCHING_SITES:
            raise OptionError(f"site must be one of {PATCHING_SITES}, got {self.site!r}.")
        if tuple(self.values.shape) != (len(self.row_labels), len(self.col_labels)):
            raise OptionError(
                f"values of shape {tuple(self.values.shape)} need {self.values.shape[0]} row labels and "
                f"{self.values.shape[-1]} column labels, got {len(self.row_labels)} and {len(self.col_labels)}."
            )
        if self.values.numel() == 0:
            raise OptionError(f"values of shape {tuple(self.values.shape)} hold no cells: a map has a layer and a column.")
        if self.site == "resid_pre" and not len(self.clean_str_tokens) == len(self.corrupted_str_tokens) == len(self.col_labels):
            raise OptionError(
                f"A resid_pre map has one column per token of the clean and of the corrupted prompt: got "
                f"{len(self.col_labels)} columns, {len(self.clean_str_tokens)} and {len(self.corrupted_str_tokens)} tokens."
            )

    # ---- tensor access -------------------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def __getitem__(self, index: Any) -> Tensor:
        item: Tensor = self.values[index]
        return item

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> "np.ndarray[Any, Any]":
        array = self.values.detach().cpu().numpy()
        return array.astype(dtype) if dtype is not None else array

    @property
    def n_layers(self) -> int:
        return len(self.row_labels)

    @property
    def gap(self) -> float:
        """``ld_clean - ld_corrupted``: what a patch can restore."""
        return self.ld_clean - self.ld_corrupted

    def label(self, layer: int, column: int) -> str:
        """The label of one cell, e.g. ``"L5H3"``."""
        return cell_label(self.row_labels[layer], self.col_labels[column], self.site)

    # ---- ranking and tables ----------------------------------------------------------------

    def _cell(self, layer: int, column: int) -> PatchingCell:
        head, position = (column, None) if self.site == "head" else (None, column)
        return PatchingCell(layer, head, position, self.label(layer, column), float(self.values[layer, column]))

    def top(self, k: int = 5, absolute: bool = False) -> list[PatchingCell]:
        """The ``k`` cells with the largest value (most restoring first), or the largest ``|value|``.

        Ties keep row-major order (lower layer, then lower column, first), on every machine.

        Raises:
            OptionError: ``k`` is not a positive int.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise OptionError(f"k must be a positive integer (how many cells to return), got {k!r}.")
        flat = self.values.detach().float().cpu().flatten()
        key = flat.abs() if absolute else flat
        key = torch.where(torch.isnan(key), -math.inf, key)  # a NaN cell (a file's null) ranks last, not first
        order = torch.argsort(key, descending=True, stable=True)[:k].tolist()
        width = self.values.shape[1]
        return [self._cell(i // width, i % width) for i in order]

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per cell: ``layer`` and ``head`` or ``position`` (+ ``token``, the clean
        prompt's, and ``corrupted_token``) as ints, ``label``, ``value``, then ``site``,
        ``method`` and ``metric``."""
        import pandas as pd

        rows = []
        for layer in range(self.values.shape[0]):
            for column in range(self.values.shape[1]):
                cell = self._cell(layer, column)
                row: dict[str, Any] = {"layer": layer}
                if self.site == "head":
                    row["head"] = column
                else:
                    row.update(position=column, token=self.clean_str_tokens[column],
                               corrupted_token=self.corrupted_str_tokens[column])
                row.update(label=cell.label, value=cell.value, site=self.site, method=self.method, metric=self.metric)
                rows.append(row)
        return pd.DataFrame(rows)

    # ---- saving --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tensors as lists, non-finite floats as None)."""
        data: dict[str, Any] = strict_json_value(
            {
                **file_header("PatchingResult"),
                "values": self.values.detach().float().cpu(),
                **{name: getattr(self, name) for name in _FIELDS if name != "values"},
            }
        )
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "PatchingResult":
        """Inverse of :meth:`to_dict`.

        Raises:
            DataFileError: A field is missing, unknown or of the wrong type.
        """
        data = strip_header(data, "PatchingResult", accepted=("patching",))
        unknown, missing = sorted(set(data) - set(_FIELDS)), [n for n in _FIELDS[:-2] if n not in data]
        _require(not unknown and not missing, f"Unknown PatchingResult field(s) {unknown}, missing {missing}.")
        for name in ("metric", "method", "site", "answer_str", "wrong_str", "model_name"):
            _require(isinstance(data.get(name, ""), str), f"Field {name!r} must be a string, got {data.get(name)!r}.")
        for name in ("row_labels", "col_labels", "clean_str_tokens", "corrupted_str_tokens"):
            value = data[name]
            _require(isinstance(value, list) and all(isinstance(t, str) for t in value),
                     f"Field {name!r} must be a list of strings.")
        for name in ("ld_clean", "ld_corrupted"):
            data[name] = _optional_float(data[name], name)  # None: NaN; a 400-digit integer is refused
        _require(isinstance(data.get("params", {}), dict), "Field 'params' must be an object.")
        data["values"] = _float_tensor(data["values"], "values")
        _require(data["values"].dim() == 2, f"Field 'values' must be a 2-d list, got shape {tuple(data['values'].shape)}.")
        try:
            return cls(**data)
        except OptionError as exc:
            raise DataFileError(f"{exc} Write results with save_json() and do not edit their structure.") from exc

    # ---- views ---------------------------------------------------------------------------

    def _title(self) -> str:
        what = "residual stream (resid_pre) layer × position" if self.site == "resid_pre" else "layer × head (hook_z, all positions)"
        return f"{self.method}: {what}"

    def show(self) -> "ScopeView":
        """An HTML view: the prompts and metric, then the map as a heatmap; cells that restore
        the clean behaviour in blue, cells that push away from it (negative values) in red.

        Every string (tokens, answer, model name) is escaped.
        """
        from ..views.components import heatmap
        from ..views.page import ScopeView

        def esc(value: Any) -> str:
            return html.escape(str(value))

        best = ", ".join(f"{c.label} {c.value:+.3g}" for c in self.top(3))
        header = (
            f'<div class="tjs-header" style="border-left:4px solid {_RESTORES_COLOR}"><b>{esc(self._title())}</b>'
            f" · {esc(self.model_name)}<br>clean {esc(repr(''.join(self.clean_str_tokens)))} → corrupted "
            f"{esc(repr(''.join(self.corrupted_str_tokens)))}<br>logit difference {esc(repr(self.answer_str))} − "
            f"{esc(repr(self.wrong_str))}: clean {self.ld_clean:.4g}, corrupted {self.ld_corrupted:.4g}"
            f"<br>value: {esc(self.metric)} · top: {esc(best)}</div>"
        )
        values = self.values.detach().float().cpu()
        sections = [header, heatmap(values.clamp_min(0), self.row_labels, self.col_labels, _RESTORES_COLOR,
                                     f"{self.metric}: positive values (restore the clean behaviour)")]
        if bool((values < 0).any()):
            sections.append(heatmap((-values).clamp_min(0), self.row_labels, self.col_labels, _HARMS_COLOR,
                                     f"{self.metric}: negative values, as their magnitude (push away from it)"))
        return ScopeView(sections, self._title())


    def plot(self) -> "Figure":
        """A static matplotlib figure (diverging colours centred on 0), not registered with pyplot.

        Labels are drawn literally (no mathtext), whatever ``$`` or ``^`` the tokens hold.
        """
        from ..views.static import TEXT_STYLE, figure

        values = self.values.detach().float().cpu().numpy()
        span = float(abs(values).max()) or 1.0
        n_rows, n_cols = values.shape
        fig = figure(figsize=(max(5.0, 0.3 * n_cols + 2.5), max(3.5, 0.16 * n_rows + 1.5)), layout="constrained")
        ax = fig.subplots()
        im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest")
        columns = [repr(t)[1:-1] for t in self.col_labels] if self.site == "resid_pre" else self.col_labels
        columns = [c if len(c) <= 24 else c[:23] + "…" for c in columns]  # a long token would squeeze the map away
        ax.set_xticks(range(n_cols), columns, rotation=70 if self.site == "resid_pre" else 0, fontsize=7, **TEXT_STYLE)
        step = max(1, n_rows // 15)  # every label would overlap on deep models
        ax.set_yticks(range(0, n_rows, step), self.row_labels[::step], fontsize=7, **TEXT_STYLE)
        ax.set_ylabel("layer")
        ax.set_title(f"{self._title()}\n{self.answer_str!r} − {self.wrong_str!r}: {self.metric}", fontsize=9, parse_math=False)
        fig.colorbar(im, ax=ax, shrink=0.8)
        return fig

    def __repr__(self) -> str:
        best = ", ".join(f"{c.label}:{c.value:+.3g}" for c in self.top(3))
        return (
            f"PatchingResult(method={self.method!r}, site={self.site!r}, shape={list(self.values.shape)}, "
            f"answer={self.answer_str!r} vs {self.wrong_str!r}, ld_clean={self.ld_clean:.4g}, "
            f"ld_corrupted={self.ld_corrupted:.4g}, top=[{best}])"
        )


_FIELDS = ("values", "metric", "method", "site", "row_labels", "col_labels", "clean_str_tokens",
           "corrupted_str_tokens", "answer_str", "wrong_str", "ld_clean", "ld_corrupted", "model_name", "params")


def as_values(value: Any) -> Any:
    """The tensor of a :class:`PatchingResult`, anything else unchanged (for functions taking either)."""
    return value.values if isinstance(value, PatchingResult) else value


register_kind("PatchingResult", PatchingResult.from_dict, old_kinds=("patching",))
