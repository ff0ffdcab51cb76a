"""Baseline attributions (docs/method.md §4), declared like the scopes and run by the same driver.

- ``gradient_x_input``: ``‖∇_{x_t} L ⊙ x_t‖₂``.
- ``integrated_gradients``: from the all-zero embedding, ``steps`` midpoint-Riemann points,
  ``x_t ⊙ mean_α ∇L(α x)`` reduced per token by L2 norm (or by the sum over d).
- ``path_semantic_scope``: the same path with the Semantic objective (the target logit).
- ``random_attribution``: seeded uniform scores.
- ``leave_one_out``: zero one token's embedding, ``KL(p_orig ‖ p_ablated)`` at the position.

``L`` is the log-probability of the target (``objective="logprob"``, i.e. minus the
cross-entropy) or its logit (``"logit"``). Every baseline takes the scopes' arguments
(batches, ``positions=``, ``target=``) and returns the same types.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import OptionError
from ..models.access import ModelAccess
from ..models.hook_names import EMBED_HOOK
from ..models.readout import Slope
from ..scopes import probes as P
from ..scopes.api import Scope, register
from ..scopes.declarations import Method, vjp_strategy
from ..scopes.driver import JobOutput, Plan, check_positive_int, job_seed
from ..scopes.engine import check_memory, forward_to_final_hidden
from ..scopes.runner import Probes, job_distributions
from .interventions import ablate_positions

OBJECTIVES = ("logprob", "logit")
REDUCTIONS = ("l2", "sum")


def _objective_probe(
    access: ModelAccess, target: int, probs: Float[Tensor, "... d_vocab"], objective: str, slope: Slope = None
) -> Float[Tensor, "... d_model"]:
    """``∂L/∂y``: ``Aᵀe_t = g'(u_t) w_t`` for the logit; ``Aᵀ(e_t - p)`` for the log-probability
    (``A = ∂z/∂y``, docs/method.md §1.1)."""
    w = P.semantic_probe(access.W_U, target, slope=slope).to(probs.device)
    if objective == "logit":
        return w.expand(*probs.shape[:-1], -1)
    return w - P.mean_unembedding(access.W_U, probs, slope).to(w.device)


def _check_choices(options: dict[str, Any], access: ModelAccess) -> None:
    for name, choices in (("objective", OBJECTIVES), ("reduce", REDUCTIONS)):
        if name in options and options[name] not in choices:
            raise OptionError(f"{name} must be one of {list(choices)}, got {options[name]!r}.")
    if "steps" in options:
        check_positive_int("steps", options["steps"], high=MAX_PATH_STEPS)


def final_distribution(
    access: ModelAccess, tokens: Tensor, position: int, fwd_hooks: Any = ()
) -> Float[Tensor, "batch d_vocab"]:
    """``p`` at ``position`` for every row of ``tokens``, in float32, without gradients."""
    with access.frozen(), torch.no_grad():
        state = forward_to_final_hidden(access, tokens, perturb=(), extra_hooks=fwd_hooks)
        z, _ = P.output_at(state.y[:, position], access.W_U, access.b_U, access.logit_transform)
        return torch.softmax(z, dim=-1)


# ---- gradient × input -----------------------------------------------------------------------


def _gxi_probes(plan: Plan, job: int, y: Tensor, probs: Tensor, slope: Slope) -> Probes:
    target = plan.target_for(job, probs)
    objective = plan.options["objective"]
    v = _objective_probe(plan.access, target, probs, objective, slope)
    return Probes(v[None], torch.ones(1), quadratic=False, target=target, params={"objective": objective})


gradient_x_input = register(Scope(Method(
    name="gxi",
    label="gradient × input",
    score_kind="norm",
    strategy=vjp_strategy(_gxi_probes, times_input=True),
    options={"objective": "logprob"},
    check_options=_check_choices,
    targeted=True,
), "gradient_x_input", """
    Gradient × input, ``‖∇_{x_t} L ⊙ x_t‖₂`` per token (one forward, one backward).

    Options: ``objective="logprob"`` (the target's log-probability, minus the cross-entropy)
    or ``"logit"``.

    Examples:
        >>> r = tjs.evaluation.gradient_x_input(model, "The capital of France is")
"""))


# ---- integrated gradients -------------------------------------------------------------------

#: Most points on an integration path (the paper uses tens; the points run as one batch).
MAX_PATH_STEPS = 4096


def _integrated(
    access: ModelAccess, tokens: Tensor, pos: int, target: int, steps: int, objectives: tuple[str, ...]
) -> tuple[dict[str, Tensor], Tensor]:
    """IG attributions ``x ⊙ mean_α ∇L(α x)`` ([pos, d_model]) for several objectives, sharing
    the path's forward pass: the ``steps`` points run as one batch."""
    check_positive_int("steps", steps, high=MAX_PATH_STEPS)
    # Before any allocation: the path's points run as one batch.
    check_memory(access, tokens.shape[-1], batch=steps)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint Riemann sum
    captured: dict[str, Tensor] = {}

    def scale(act: Tensor, hook: Any) -> Tensor:
        captured["x"] = act[0].detach()
        return act * alphas.to(act)[:, None, None]

    batch = tokens.expand(steps, -1)
    with access.frozen():
        state = forward_to_final_hidden(access, batch, extra_hooks=[(EMBED_HOOK, scale)])
        y = state.y[:, pos]  # [steps, d]
        z, slope = P.output_at(y, access.W_U, access.b_U, access.logit_transform, need_slope=True)
        probs = torch.softmax(z, dim=-1)
        out = {}
        for i, objective in enumerate(objectives):
            v = _objective_probe(access, target, probs, objective, slope)
            (grad,) = torch.autograd.grad(
                y, state.leaves[EMBED_HOOK], grad_outputs=v.to(y), retain_graph=i + 1 < len(objectives)
            )
            # x as it enters the residual stream (hook_embed times the model's fixed embedding scale).
            out[objective] = captured["x"].float() * state.embed_scale * grad.float().mean(dim=0)
    return out, probs


def _path(plan: Plan, objective: str) -> list[JobOutput]:
    """IG and path-Semantic: integrate along the scaled-embedding path, one job at a time."""
    steps, reduce = plan.options["steps"], plan.options["reduce"]
    objective = plan.options.get("objective", objective)
    outputs = []
    for job, probs in enumerate(job_distributions(plan)):
        row, pos = plan.jobs[job]
        target = plan.target_for(job, probs)
        attributions, _ = _integrated(plan.access, plan.rows[row][None], pos, target, steps, (objective,))
        a = attributions[objective]
        scores = a.norm(dim=-1) if reduce == "l2" else a.sum(dim=-1)
        params = {"steps": steps, "objective": objective, "reduce": reduce, "baseline": "zero"}
        outputs.append(JobOutput(scores.cpu(), probs, target, params))
        plan.bar.advance(1)
    return outputs


integrated_gradients = register(Scope(Method(
    name="ig",
    label="integrated gradients",
    score_kind="norm",
    strategy=functools.partial(_path, objective="logprob"),
    options={"steps": 16, "objective": "logprob", "reduce": "l2"},
    check_options=_check_choices,
    targeted=True,
), "integrated_gradients", """
    Integrated gradients from the all-zero embedding (``steps`` midpoint points, one batch).

    Per token: the L2 norm over d of ``x_t ⊙ mean_α ∇L(α x)`` (``reduce="sum"`` for the signed
    sum, Captum's convention). Options: ``steps=16``, ``objective="logprob" | "logit"``,
    ``reduce="l2" | "sum"``.

    Examples:
        >>> r = tjs.evaluation.integrated_gradients(model, "The capital of France is", steps=32)
"""))

path_semantic_scope = register(Scope(Method(
    name="path_semantic",
    label="path-integrated Semantic",
    score_kind="norm",
    strategy=functools.partial(_path, objective="logit"),
    options={"steps": 16, "reduce": "l2"},
    check_options=_check_choices,
    targeted=True,
), "path_semantic_scope", """
    Path-integrated Semantic Scope: the integrated-gradients path with the Semantic objective
    (the target logit ``w_target · y``). Options: ``steps=16``, ``reduce="l2" | "sum"``.

    Examples:
        >>> r = tjs.evaluation.path_semantic_scope(model, "The capital of France is", target=" Paris")
"""))


# ---- random and leave-one-out ---------------------------------------------------------------


def _check_seed(options: dict[str, Any], access: ModelAccess) -> None:
    check_positive_int("seed", options["seed"], low=0)


def _random(plan: Plan) -> list[JobOutput]:
    outputs = []
    for job, probs in enumerate(job_distributions(plan)):
        row, pos = plan.jobs[job]
        generator = torch.Generator().manual_seed(job_seed(plan, job, plan.options["seed"]))
        scores = torch.rand(len(plan.rows[row]), generator=generator)
        scores[pos + 1 :] = 0
        outputs.append(JobOutput(scores, probs, int(probs.argmax()), {"seed": plan.options["seed"]}))
    return outputs


random_attribution = register(Scope(Method(
    name="random",
    label="random",
    score_kind="random",
    strategy=_random,
    options={"seed": 0},
    check_options=_check_seed,
), "random_attribution", """
    Seeded uniform random scores for positions up to the explained one (0 after): the floor.

    Examples:
        >>> r = tjs.evaluation.random_attribution(model, "The capital of France is", seed=1)
"""))


def _check_loo(options: dict[str, Any], access: ModelAccess) -> None:
    check_positive_int("ablation_batch_size", options["ablation_batch_size"])
    ablate_positions([0], options["replacement"], access.model)  # validates the replacement


def _leave_one_out(plan: Plan) -> list[JobOutput]:
    access = plan.access
    replacement, per_pass = plan.options["replacement"], plan.options["ablation_batch_size"]
    distributions = job_distributions(plan)
    outputs = []
    for row, tokens in enumerate(plan.rows):
        row_jobs = [j for j, (r, _) in enumerate(plan.jobs) if r == row]
        positions = [plan.jobs[j][1] for j in row_jobs]
        p_orig = torch.stack([distributions[j] for j in row_jobs])  # [jobs, vocab]
        log_orig = p_orig.clamp_min(1e-30).log()
        scores = torch.zeros(len(row_jobs), len(tokens))
        check_memory(access, len(tokens), batch=per_pass)
        for start in range(0, max(positions) + 1, per_pass):
            ablated = torch.arange(start, min(start + per_pass, max(positions) + 1))
            mask = torch.zeros(len(ablated), len(tokens), dtype=torch.bool)
            mask[torch.arange(len(ablated)), ablated] = True
            hooks = ablate_positions(mask, replacement, access.model)
            with access.frozen(), torch.no_grad():
                state = forward_to_final_hidden(access, tokens[None].expand(len(ablated), -1), perturb=(),
                                                extra_hooks=hooks)
                logits, _ = P.output_at(state.y[:, positions], access.W_U, access.b_U,
                                        access.logit_transform)  # [abl, jobs, vocab]
                log_abl = torch.log_softmax(logits, dim=-1)
            kl = (p_orig * (log_orig - log_abl)).sum(dim=-1)  # [abl, jobs]
            scores[:, ablated] = kl.T.float().cpu()
            plan.bar.advance(len(row_jobs) * len(ablated) / (max(positions) + 1))
        for i, (j, pos) in enumerate(zip(row_jobs, positions)):
            scores[i, pos + 1 :] = 0  # causality: later tokens cannot move this prediction
            params = {"replacement": replacement if not isinstance(replacement, Tensor) else "vector"}
            outputs.append((j, JobOutput(scores[i], distributions[j], int(distributions[j].argmax()), params)))
    return [out for _, out in sorted(outputs, key=lambda item: item[0])]


leave_one_out = register(Scope(Method(
    name="loo",
    label="leave-one-out",
    score_kind="kl",
    strategy=_leave_one_out,
    options={"replacement": "zero", "ablation_batch_size": 32},
    check_options=_check_loo,
), "leave_one_out", """
    Occlusion: ablate each token's embedding in turn, score ``KL(p_orig ‖ p_ablated)`` at the
    explained position. Ablations run ``ablation_batch_size`` rows per forward pass, without
    gradients. Options: ``replacement="zero" | "mean" | token id | vector``.

    Examples:
        >>> r = tjs.evaluation.leave_one_out(model, "The capital of France is")
"""))
