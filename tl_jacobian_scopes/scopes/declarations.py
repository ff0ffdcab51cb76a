"""Each scope and baseline is a small declaration; :mod:`.driver` runs all of them.

A :class:`Method` says what a method is called, what kind of score it gives, which of the
common arguments it takes, its own options (with defaults and checks), and its
*strategy*: how its scores are made from a validated :class:`~.driver.Plan`. The three
Jacobian scopes share one strategy (a forward pass, then vector-Jacobian products with
their probes, :func:`.runner.run_jobs`); they differ only in their probes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

import torch
from torch import Tensor

from ..errors import (
    ArchitectureError, OptionError, PrecisionWarning, ProcessedWeightsError, ProcessedWeightsWarning, TargetError,
)
from ..models.access import ModelAccess, is_degenerate_norm
from ..models.readout import Slope, slope_row
from . import probes as P
from .engine import model_family
from .driver import NEXT, JobOutput, Plan, Strategy, check_positive_int, job_seed, warn_at_caller
from .runner import ProbeMaker, Probes, run_jobs

ScoreKind = Literal["norm", "quadratic", "kl", "random"]


@dataclass(frozen=True)
class Method:
    """A scope or baseline, as the driver sees it.

    Attributes:
        name: Registry name (``"semantic"``, ``"gxi"``, ...), stored in each result's ``scope``.
        label: Human-readable name for views and tables.
        score_kind: ``"norm"`` (L2 norms), ``"quadratic"`` (Fisher: a KL curvature),
            ``"kl"`` (leave-one-out) or ``"random"``: never put two kinds on one colour scale.
        strategy: ``plan -> [JobOutput]``: how the scores are made.
        options: The method's own keyword options and their defaults.
        check_options: Validates the merged options before any forward pass.
        targeted: Takes ``target=`` (a token, ``None`` for the top prediction, or ``"next"``).
        contrastive: Takes ``contrast=`` (explains a logit difference).
        internals: Supports ``internals=True`` (layer, attention, MLP and head maps).
        probe_count: ``(options, access) -> (probes per job, bytes to make one job's probes)``,
            for the memory guard; ``None``: one probe per job, made in place.
        color: The colour of the method's views (``"#rrggbb"``); ``None``: grey.
    """

    name: str
    label: str
    score_kind: ScoreKind
    strategy: Strategy
    options: Mapping[str, Any] = field(default_factory=dict)
    check_options: Optional[Callable[[dict[str, Any], ModelAccess], None]] = None
    targeted: bool = False
    contrastive: bool = False
    internals: bool = False
    probe_count: Optional[Callable[[dict[str, Any], ModelAccess], tuple[int, int]]] = None
    color: Optional[str] = None

    def __post_init__(self) -> None:
        # The views write the colour into a style attribute and parse it as hex: anything else
        # would break the page (or inject markup into it) and the app's colouring.
        if self.color is not None and not (isinstance(self.color, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", self.color)):
            raise OptionError(f"Method {self.name!r}: color must be None or '#rrggbb' (e.g. '#8a2be2'), "
                              f"got {self.color!r}.")


def vjp_strategy(make_probes: ProbeMaker, times_input: bool = False) -> Strategy:
    """The strategy of every gradient method: one forward pass, then VJPs with its probes.

    A ``partial`` of module-level functions (not a closure), so that methods pickle."""
    return functools.partial(_run_vjp, make_probes=make_probes, times_input=times_input)


def _run_vjp(plan: Plan, make_probes: ProbeMaker, times_input: bool) -> list[JobOutput]:
    return run_jobs(plan, make_probes, times_input)


# ---- Semantic -------------------------------------------------------------------------------


def _semantic_probes(plan: Plan, job: int, y: Tensor, probs: Tensor, slope: Slope) -> Probes:
    target, contrast = plan.target_for(job, probs), plan.contrasts[job]
    if contrast == target:
        which = ("the next token in the text (target='next')" if plan.targets[job] == NEXT
                 else "the default target (the model's top prediction)")
        raise TargetError(f"contrast equals {which} at position {plan.jobs[job][1]}: their logit difference "
                          "is 0. Pass another contrast or an explicit target=.")
    v = P.semantic_probe(plan.access.W_U, target, contrast, slope)
    return Probes(v[None], torch.ones(1), quadratic=False, target=target)


def _semantic(plan: Plan) -> list[JobOutput]:
    if any(c is None for c in plan.contrasts) and plan.access.unembed_centered():
        warn_at_caller(
            "W_U was centered (center_unembed=True): Semantic scores explain the target logit "
            "minus the mean logit. Load unprocessed weights for the raw logit, or pass contrast= "
            "(logit differences are unaffected by centering).",
            ProcessedWeightsWarning,
        )
    return run_jobs(plan, _semantic_probes)


SEMANTIC = Method(
    name="semantic",
    label="Semantic Scope", color="#1f77b4",
    score_kind="norm",
    strategy=_semantic,
    targeted=True,
    contrastive=True,
    internals=True,
)


# ---- Temperature ----------------------------------------------------------------------------

FOLDED = (
    "Temperature Scope needs the final norm's scale in y, but this model folded it into W_U "
    "(fold_ln=True or enable_compatibility_mode()), so ‖y‖ is constant and every score would "
    "be ~0. Load unprocessed weights: tl_jacobian_scopes.load_default_model(), "
    "HookedTransformer.from_pretrained_no_processing(...), or a TransformerBridge without "
    "enable_compatibility_mode() (or with no_processing=True)."
)


def _temperature_probes(plan: Plan, job: int, y: Tensor, probs: Tensor, slope: Slope) -> Probes:
    if is_degenerate_norm(y):
        raise ProcessedWeightsError(
            f"‖y‖ = √d_model exactly at position {plan.jobs[job][1]}: either the final norm's scale is exactly 1 "
            f"everywhere (an untrained norm), or it was folded. {FOLDED}")
    return Probes(P.temperature_probe(y)[None], torch.ones(1), quadratic=False,
                  target=int(probs.argmax()), params={"y_norm": float(y.detach().float().norm())})


def _temperature(plan: Plan) -> list[JobOutput]:
    if plan.access.final_norm_folded():
        raise ProcessedWeightsError(FOLDED)
    unscaled = plan.access.final_norm_without_scale()
    if unscaled is not None:
        raise ArchitectureError(
            f"Temperature Scope is undefined for this architecture ({model_family(plan.access)}): its final norm "
            f"({unscaled}) has no learned scale, so ‖y‖ = √d_model·(1 - O(ε/σ²)) is constant by construction (as "
            "in OLMo v1, whose LayerNorms have no parameters; the weights were not folded). Its gradient would be "
            "that of the norm's epsilon term, not a change of confidence. Use the Semantic or Fisher scope, which "
            "follow the logits (docs/method.md §2.5).")
    return run_jobs(plan, _temperature_probes)


TEMPERATURE = Method(
    name="temperature",
    label="Temperature Scope", color="#d62728",
    score_kind="norm",
    strategy=_temperature,
    internals=True,
)


# ---- Fisher ---------------------------------------------------------------------------------


def _check_fisher(options: dict[str, Any], access: ModelAccess) -> None:
    d = access.d_model
    rank, samples = options["rank"], options["samples"]
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= d):
        raise OptionError(f"rank must be an int in 1..{d} (d_model), or None for exact Fisher; got {rank!r}.")
    if samples is not None:
        if rank is not None:
            raise OptionError("samples= estimates the exact trace: pass rank=None with it.")
        check_positive_int("samples", samples, low=2)
        check_positive_int("deflate", options["deflate"], low=0, high=d - 1)
    check_positive_int("seed", options["seed"], low=0)


def _fisher_probe_count(options: dict[str, Any], access: ModelAccess) -> tuple[int, int]:
    """Fisher's probes per job and the bytes that make them (the memory guard counts both)."""
    rank, samples, deflate = options["rank"], options["samples"], options["deflate"]
    d, vocab = access.d_model, access.d_vocab
    if samples is not None:
        # Rademacher z [samples, d_vocab]: drawn as int64, then a float32 copy and its ±1 rescale.
        return samples + deflate, 16 * samples * vocab + 8 * samples * d
    if rank is None:  # every eigenpair of the formed F (float64 and its eigen-decomposition)
        return d, 4 * d * d * 8
    return rank, 0


#: ``1 - p_top`` below which float32 Fisher scores are warned about (measured: 0.4% relative error
#: at 3.6e-6, 52% at 5e-8 on a tiny Cohere model against a float64 reference).
SATURATION = 1e-5


def _warn_saturated(probs: Tensor) -> None:
    """Warn when some prediction is too confident for float32 Fisher scores (:class:`PrecisionWarning`)."""
    probs = probs.float()
    top = probs.argmax(dim=-1, keepdim=True)
    # The complement summed directly: 1 - p_top itself would cancel.
    rest = probs.scatter(-1, top, 0.0).sum(dim=-1)
    smallest = float(rest.min())
    if smallest < SATURATION:
        warn_at_caller(
            f"A prediction is nearly certain (1 - p_top = {smallest:.2g}): F = W diag(p) W^T - mu mu^T is then a "
            "difference of nearly equal float32 terms, so Fisher scores may lose most of their digits (docs/method.md "
            "§2.3). Semantic and Temperature scores are not affected: use them, or explain a less certain position.",
            PrecisionWarning)


def _fisher_probes(plan: Plan, Y: Tensor, probs: Tensor, slopes: Slope) -> list[Probes]:
    """Every job's Fisher probes; the top eigenpairs of all positions are found in one batch."""
    rank, samples, deflate = (plan.options[k] for k in ("rank", "samples", "deflate"))
    _warn_saturated(probs)
    top = rank if samples is None else deflate
    if top is None:  # exact Fisher: every eigenpair, from the formed F
        return [_fisher_job_probes(plan, i, probs[i], slope_row(slopes, i), None) for i in range(len(plan.jobs))]
    if top == 0:
        d = plan.access.d_model
        return [_fisher_job_probes(plan, i, probs[i], slope_row(slopes, i), (torch.zeros(0), torch.zeros(0, d)))
                for i in range(len(plan.jobs))]
    W_U = plan.access.W_U
    # One pass over W_U each, shared by the eigen-solver and the trace.
    mean, sq_norms = P.mean_unembedding(W_U, probs, slopes), P.unembedding_sq_norms(W_U)
    evals, evecs = P.fisher_top_eigenpairs(W_U, probs, top, mean=mean, sq_norms=sq_norms, slope=slopes)
    traces = P.fisher_trace(W_U, probs, mean, sq_norms, slopes) if samples is None else None
    return [_fisher_job_probes(plan, i, probs[i], slope_row(slopes, i), (evals[i], evecs[i]),
                               None if traces is None else float(traces[i]))
            for i in range(len(plan.jobs))]


def _fisher_job_probes(plan: Plan, job: int, probs: Tensor, slope: Slope, top: Optional[tuple[Tensor, Tensor]],
                       trace: Optional[float] = None) -> Probes:
    """One job's probes from its top eigenpairs (``None``: exact Fisher, all of them)."""
    W_U = plan.access.W_U
    rank, samples, deflate, seed = (plan.options[k] for k in ("rank", "samples", "deflate", "seed"))
    target = int(probs.argmax())
    if samples is not None:
        assert top is not None
        evals, evecs = top
        generator = torch.Generator(device=W_U.device).manual_seed(job_seed(plan, job, seed))
        noise = P.fisher_sample_probes(W_U, probs, samples, generator, slope)
        if deflate:
            noise = noise - (noise @ evecs.T.to(noise.device)) @ evecs.to(noise.device)
        params = {"rank": "exact", "estimator": "stochastic", "samples": samples, "deflate": deflate,
                  "seed": seed, "eigenvalues": evals.tolist()}
        vectors = torch.cat([evecs.to(noise.device), noise])
        weights = torch.cat([evals, torch.full((samples,), 1.0 / samples, device=evals.device)])
        return Probes(vectors, weights, quadratic=True, target=target, params=params, stochastic_from=deflate)
    if top is None:
        evals, evecs = P.fisher_eigenpairs(P.fisher_matrix(W_U, probs, slope))
        trace = float(evals.sum())
    else:
        evals, evecs = top
    assert trace is not None
    k = evals.shape[0]
    params = {
        "rank": "exact" if rank is None else rank,
        "n_probes": k,
        "eigenvalues": evals[: min(k, 16)].tolist(),
        "trace_F": trace,
        "captured_trace": float(evals[:k].sum()) / trace if trace > 0 else 1.0,
    }
    return Probes(evecs[:k], evals[:k], quadratic=True, target=target, params=params)


def _fisher(plan: Plan) -> list[JobOutput]:
    if plan.options["rank"] is not None and plan.access.final_norm_folded():
        warn_at_caller(
            "The final norm's scale was folded into W_U (fold_ln=True or enable_compatibility_mode()): "
            "this rescales y's coordinates, which changes F's top eigen-directions, so rank-k Fisher "
            "scores differ from those of the raw model. Exact Fisher (rank=None) is invariant.",
            ProcessedWeightsWarning,
        )
    return run_jobs(plan, None, make_all_probes=_fisher_probes)


FISHER = Method(
    name="fisher",
    label="Fisher Scope", color="#2ca02c",
    score_kind="quadratic",
    strategy=_fisher,
    options={"rank": 1, "samples": None, "deflate": 8, "seed": 0},
    check_options=_check_fisher,
    internals=True,
    probe_count=_fisher_probe_count,
)
