"""Run a scope for many explained predictions with one forward pass.

A *job* is one explained prediction: (prompt row of a padded batch, position). All jobs
share one forward pass. Their probes are packed into as few backward passes as possible:
jobs in different rows never interact (a row only sees its own tokens), so one VJP can
carry one probe for every row at once; jobs in the same row (many positions of one text)
need VJPs of their own. With ``k`` probes per job and at most ``G`` jobs per row, the
whole call costs one forward pass and ``k * G`` vectorized VJPs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..models.access import ModelAccess
from ..models.hook_names import EMBED_HOOK, FINAL_HOOK, leaf_hook_names
from ..models.readout import Slope, slope_row
from . import probes as P
from .driver import JobOutput, Plan, check_finite
from ..errors import ArchitectureError
from .engine import attention_kernel, batched_vjp, forward_to_final_hidden, model_family, probe_chunk_size
from .internals import assemble


@dataclass
class Probes:
    """What one job pushes through the backward pass, and what it reports.

    ``vectors[j]`` is weighted by ``weights[j]``; probes from index ``stochastic_from`` on
    are random samples whose spread gives a standard error. ``quadratic`` scores are the
    weighted sums of squared VJP norms (Fisher); otherwise their square root (a norm).
    """

    vectors: Float[Tensor, "k d_model"]
    weights: Float[Tensor, " k"]
    quadratic: bool
    target: int
    params: dict[str, Any] = field(default_factory=dict)
    stochastic_from: Optional[int] = None


#: ``(plan, job index, y, p, g'(u)) -> Probes``; ``y``, ``p`` (float32) and the slope of the
#: model's output transform (:data:`~..models.readout.Slope`) belong to the job.
ProbeMaker = Callable[[Plan, int, Tensor, Tensor, Slope], Probes]
#: ``(plan, Y, P, slopes) -> one Probes per job``: all jobs' probes at once (``Y`` [jobs, d], ``P``
#: [jobs, V]), for probes whose construction batches over positions (Fisher's eigen-solver).
BatchProbeMaker = Callable[[Plan, Tensor, Tensor, Slope], list[Probes]]


def pad_rows(access: ModelAccess, rows: Sequence[Tensor], padding_side: str) -> tuple[Tensor, Tensor, list[int]]:
    """Stack 1-D token rows into ``[batch, max_len]``: tokens, attention mask, row offsets."""
    longest = max(len(r) for r in rows)
    tokenizer = access.tokenizer
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else 0
    tokens = torch.full((len(rows), longest), pad_id, dtype=torch.long, device=rows[0].device)
    mask = torch.zeros((len(rows), longest), dtype=torch.long, device=rows[0].device)
    offsets = []
    for i, row in enumerate(rows):
        start = longest - len(row) if padding_side == "left" else 0
        tokens[i, start : start + len(row)] = row
        mask[i, start : start + len(row)] = 1
        offsets.append(start)
    return tokens, mask, offsets


def _padded_jobs(plan: Plan) -> tuple[Tensor, list[int], dict[str, Any], Tensor, Tensor]:
    """The plan's rows padded into one batch: tokens, row offsets, the forward pass's keyword
    arguments (a mask for left padding), and each job's row and column in the batch."""
    tokens, mask, offsets = pad_rows(plan.access, plan.rows, plan.padding_side)
    forward_kwargs: dict[str, Any] = {}
    if plan.padding_side == "left" and bool((mask == 0).any()):
        forward_kwargs = {"attention_mask": mask, "padding_side": "left"}
    job_rows = torch.tensor([r for r, _ in plan.jobs])
    job_cols = torch.tensor([offsets[r] + p for r, p in plan.jobs])
    return tokens, offsets, forward_kwargs, job_rows, job_cols


def _distributions(plan: Plan, Y: Tensor, need_slope: bool = False) -> tuple[Tensor, Slope]:
    """``p`` (float32) from each job's final hidden state, after checking that it is finite,
    and the slope ``g'(u)`` of the model's output transform when ``need_slope``."""
    check_finite(plan, Y, "final hidden state y")
    access = plan.access
    z, slope = P.output_at(Y, access.W_U, access.b_U, access.logit_transform, need_slope)
    return torch.softmax(z, dim=-1), slope


def _checked_vjps(access: ModelAccess, Y: Tensor, leaves: list[Tensor], names: list[str], grad_outputs: Tensor,
                  chunk: int) -> Iterator[tuple[slice, tuple[Tensor, ...]]]:
    """:func:`.engine.batched_vjp`, where a perturbed hook that does not feed the output (an
    observation-only hook point of the family's bridge) is an :class:`ArchitectureError`."""
    try:
        yield from batched_vjp(Y, leaves, grad_outputs, chunk)
    except RuntimeError as exc:
        found = re.search(r"Tensor at index (\d+) appears to not have been used in the graph", str(exc))
        if found is None or int(found.group(1)) >= len(names):
            raise
        raise ArchitectureError(
            f"This model's hook point '{names[int(found.group(1))]}' does not feed its output "
            f"({model_family(access)}, {access.backend}): an edit there would change nothing, so TransformerLens "
            "exposes the activation for observation only and no sensitivity can be taken there. Run without "
            "internals=True, or use another TransformerLens version or backend for this family."
        ) from exc


def run_jobs(plan: Plan, make_probes: Optional[ProbeMaker], times_input: bool = False,
             make_all_probes: Optional[BatchProbeMaker] = None) -> list[JobOutput]:
    """Explain every job of ``plan`` with one forward pass over its padded rows.

    Args:
        plan: The validated call (rows, jobs, internals, padding side, progress).
        make_probes: Builds each job's probes from its ``y`` and ``p``.
        make_all_probes: Instead of ``make_probes``: builds all jobs' probes at once.
        times_input: Score ``‖(v^T J_t) ⊙ x_t‖`` (gradient × input) instead of ``‖v^T J_t‖``.

    Rows are padded on ``plan.padding_side`` (``"right"`` needs no mask for a causal
    model; ``"left"`` passes an attention mask and offset positions).
    """
    access, rows, jobs = plan.access, plan.rows, plan.jobs
    internals = plan.internals
    tokens, offsets, forward_kwargs, job_rows, job_cols = _padded_jobs(plan)
    leaf_names = leaf_hook_names(access.n_layers, internals)
    # Group g of a job = how many earlier jobs share its row: one VJP can serve one job per row.
    seen: dict[int, int] = {}
    groups = []
    for r, _ in jobs:
        groups.append(seen.get(r, 0))
        seen[r] = groups[-1] + 1
    n_groups = max(groups) + 1
    group_of = torch.tensor(groups)

    # Decided once for the forward pass and the probe chunking (it walks the attention modules).
    kernel = plan.kernel or attention_kernel(access, [*leaf_names, FINAL_HOOK])
    with access.frozen():
        state = forward_to_final_hidden(access, tokens, leaf_names, keep_activations=internals or times_input,
                                        kernel=kernel, **forward_kwargs)
        device = state.y.device
        Y = state.y[job_rows.to(device), job_cols.to(device)]  # [jobs, d_model]
        probs, slopes = _distributions(plan, Y, need_slope=True)
        probs = probs.to(device)
        # Progress: making a job's probes counts as half of the job, its backward passes as the other half.
        if make_all_probes is not None:
            probes = make_all_probes(plan, Y, probs, slopes)
            plan.bar.advance(0.5 * len(jobs))
        else:
            assert make_probes is not None, "run_jobs needs make_probes or make_all_probes"
            probes = []
            for i in range(len(jobs)):
                probes.append(make_probes(plan, i, Y[i], probs[i], slope_row(slopes, i)))
                plan.bar.advance(0.5)
        k = probes[0].vectors.shape[0]
        assert all(p.vectors.shape[0] == k for p in probes), "a method must use one probe count per call"
        vectors = torch.stack([p.vectors.to(device) for p in probes], dim=1)  # [k, jobs, d]
        weights = torch.stack([p.weights.float().to(device) for p in probes], dim=1)  # [k, jobs]
        stochastic_from = probes[0].stochastic_from
        # VJP number v = g * k + j carries probe j of every job in group g.
        in_group = (group_of[None, :] == torch.arange(n_groups)[:, None]).to(device)  # [G, jobs]
        grad_outputs = (vectors[None] * in_group[:, None, :, None]).reshape(n_groups * k, len(jobs), -1)
        vjp_group = torch.arange(n_groups * k, device=device) // k
        vjp_probe = torch.arange(n_groups * k, device=device) % k

        chunk = probe_chunk_size(access, tokens.shape[1], n_groups * k, n_leaves=len(leaf_names), batch=len(rows),
                                 kernel=kernel)
        leaves = [state.leaves[n] for n in leaf_names]
        totals: dict[str, Tensor] = {}
        moments: dict[str, list[Tensor]] = {}
        for sl, grads in _checked_vjps(access, Y, leaves, leaf_names, grad_outputs, chunk):
            # Weight of VJP c for job i: its probe's weight if the job is in its group.
            member = in_group[vjp_group[sl]].float()  # [c, jobs]
            w = weights[vjp_probe[sl]] * member
            for name, grad in zip(leaf_names, grads):
                if times_input and name == EMBED_HOOK:
                    grad = grad * state.activations[EMBED_HOOK]
                sq = grad.float().pow(2).sum(dim=-1)[:, job_rows.to(grad.device)]  # [c, jobs, pos, ...]
                part = torch.einsum("cj,cj...->j...", w.to(sq.device), sq)
                totals[name] = totals[name] + part if name in totals else part
                if stochastic_from is not None and name == EMBED_HOOK:
                    s = member * (vjp_probe[sl] >= stochastic_from).float()[:, None]
                    s = s.to(sq.device)
                    m1 = torch.einsum("cj,cj...->j...", s, sq)
                    m2 = torch.einsum("cj,cj...->j...", s, sq.pow(2))
                    if name in moments:
                        moments[name][0] += m1
                        moments[name][1] += m2
                    else:
                        moments[name] = [m1, m2]
            plan.bar.advance(0.5 * len(jobs) * (sl.stop - sl.start) / (n_groups * k))

    outputs = []
    for i, ((r, _), probe) in enumerate(zip(jobs, probes)):
        span = slice(offsets[r], offsets[r] + len(rows[r]))
        per_leaf = {n: t[i][span] for n, t in totals.items()}
        if not probe.quadratic:
            per_leaf = {n: t.sqrt() for n, t in per_leaf.items()}
        stderr = None
        if stochastic_from is not None:
            m = k - stochastic_from
            s1, s2 = (x[i][span] for x in moments[EMBED_HOOK])
            mean = s1 / m
            var = (s2 / m - mean.pow(2)).clamp_min(0) * m / max(m - 1, 1)
            # The estimate is weight * s1 with weight 1/m per probe: its standard error.
            stderr = (var / m).sqrt().cpu()
        maps = None
        if internals:
            acts = {n: a[r : r + 1, span] for n, a in state.activations.items()}
            maps = assemble(access.n_layers, per_leaf, acts)
        outputs.append(JobOutput(per_leaf[EMBED_HOOK].detach().float().cpu(), probs[i], probe.target,
                                 probe.params, stderr, maps))
    return outputs


def job_distributions(plan: Plan) -> list[Float[Tensor, " d_vocab"]]:
    """Each job's next-token distribution (float32), from one forward pass without gradients."""
    tokens, _, forward_kwargs, rows, cols = _padded_jobs(plan)
    with plan.access.frozen(), torch.no_grad():
        state = forward_to_final_hidden(plan.access, tokens, perturb=(), **forward_kwargs)
        probs, _ = _distributions(plan, state.y[rows.to(state.y.device), cols.to(state.y.device)])
    return list(probs.unbind(0))
