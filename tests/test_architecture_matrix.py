"""The architecture matrix (issue 19): every decoder family TransformerLens supports, on every
backend installed, against a float64 brute force on the plain Hugging Face model's own logits.

One tiny random model per family (``architectures.py``, built once per session), one
reference per family, one TransformerLens model per (family, backend). A family either agrees
with the reference on every scope, or TransformerLens cannot run it and the library says so
with a :class:`ScopeError` naming the architecture. docs/architectures.md is written from the
same table by ``benchmarks/architecture_matrix.py``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tl_jacobian_scopes as tjs
from architectures import FAMILIES, FAMILY_BY_NAME, Family, check_reference, layer_jacobian, reference, tiny_family_model
from tiny_models import BACKENDS, assert_close, tiny_tokenizer
from tl_jacobian_scopes.models.loading import bridge_from_hf, hooked_from_hf

PROMPT = "the cat sat on the mat and the dog ran to"
SHORT = "a big red sun is in the"
MID = 4  # an earlier explained position (teacher forcing)
RTOL = 2e-4  # float32 library vs float64 reference, relative to the largest score


def load(family: Family, backend: str) -> Any:
    """The family's tiny model on ``backend``, or the ScopeError the library refuses it with."""
    return _load(family.name, backend)


@functools.lru_cache(maxsize=None)
def _load(name: str, backend: str) -> Any:
    hf = tiny_family_model(name)
    if backend == "bridge":
        return bridge_from_hf(hf, tiny_tokenizer(), f"tiny-{name}", device="cpu")
    return hooked_from_hf(hf, tiny_tokenizer(), device="cpu")


@functools.lru_cache(maxsize=None)
def _reference(name: str, tokens: tuple[int, ...], position: int) -> Any:
    ref = reference(FAMILY_BY_NAME[name], tiny_family_model(name), torch.tensor(tokens), position)
    check_reference(ref)
    return ref


def _tokens(text: str) -> torch.Tensor:
    tok = tiny_tokenizer()
    return torch.tensor([tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids)


def run_family(family: Family, backend: str) -> str:
    """Every check of the matrix on one family and backend.

    Returns ``"green"``; ``"green; internals refused: <message>"`` when the token scopes agree
    and ``internals=True`` is refused; ``"refused: <message>"`` when the library refuses the
    model. Every refusal must be a ScopeError that names the architecture (never a raw error);
    any disagreement with the reference fails.
    """
    try:
        model = load(family, backend)
        _check_tokens(family, model)
    except tjs.ScopeError as exc:
        return "refused: " + _named(family, exc)
    try:
        _check_internals(family, model)
    except tjs.ScopeError as exc:
        return "green; internals refused: " + _named(family, exc)
    return "green"


def _named(family: Family, exc: Exception) -> str:
    message = str(exc)
    assert family.arch in message, f"the refusal does not name {family.arch}: {message}"
    return message


def _setup(family: Family) -> tuple[torch.Tensor, Any, int, int]:
    tokens = _tokens(PROMPT)
    ref = _reference(family.name, tuple(tokens.tolist()), len(tokens) - 1)
    order = torch.argsort(ref.z, descending=True)
    return tokens, ref, int(order[0]), int(order[2])


def _check_tokens(family: Family, model: Any) -> None:
    tokens, ref, top, third = _setup(family)
    T, ids = len(tokens), tokens[None]

    # p is the model's own softmax (transform included), and the top prediction is its argmax.
    sem = tjs.semantic_scope(model, ids, target=third)
    assert sem.predicted == top
    assert sem.predicted_prob == pytest.approx(float(ref.p[top]), rel=1e-4, abs=1e-6)
    assert sem.target_prob == pytest.approx(float(ref.p[third]), rel=1e-4, abs=1e-6)
    assert_close(sem.scores, ref.semantic(third), RTOL)
    # The leaf is documented in params; a family the library cannot verify says so.
    if family.leaf_is_raw_embedding:
        assert sem.params["embedding_leaf"] == "hook_embed_unverified", sem.params
    con = tjs.semantic_scope(model, ids, target=third, contrast=top)
    assert con.contrast_prob == pytest.approx(float(ref.p[top]), rel=1e-4, abs=1e-6)
    assert_close(con.scores, ref.semantic(third, top), RTOL)

    if family.scale_free_final_norm:
        # ‖y‖ is constant by construction: its own message, never the folded-weights one.
        with pytest.raises(tjs.ArchitectureError, match=family.arch):
            tjs.temperature_scope(model, ids)
    else:
        assert_close(tjs.temperature_scope(model, ids).scores, ref.temperature(), RTOL)

    exact = tjs.fisher_scope(model, ids, rank=None)
    assert_close(exact.scores, ref.fisher_exact(), RTOL)
    rank1 = tjs.fisher_scope(model, ids, rank=1)
    assert_close(rank1.scores, ref.fisher_rank(1), RTOL)
    # Stochastic: unbiased, so within 6 standard errors of the exact trace for every token
    # (fixed seed, so deterministic; |t| > 6 with 31 degrees of freedom has probability < 1e-6
    # per token, under 1e-3 over the whole matrix).
    stoch = tjs.fisher_scope(model, ids, rank=None, samples=32, deflate=1, seed=0)
    assert stoch.stderr is not None
    err = (stoch.scores - exact.scores).abs()
    assert bool((err <= 6 * stoch.stderr + 1e-4 * float(exact.scores.max())).all()), (err, stoch.stderr)

    # Batches (two prompts of different lengths, padded) and positions="all" equal single calls.
    short = _tokens(SHORT)
    batch = tjs.fisher_scope(model, [tokens.tolist(), short.tolist()], rank=1)
    _same(batch[0].scores, rank1.scores)
    _same(batch[1].scores, tjs.fisher_scope(model, short.tolist(), rank=1).scores)
    matrix = tjs.fisher_scope(model, ids, rank=1, positions="all")
    assert matrix.scores.shape == (T, T)
    _same(matrix.scores[-1], rank1.scores)
    _same(matrix.scores[MID], tjs.fisher_scope(model, ids, rank=1, position=MID).scores)
    sems = tjs.semantic_scope(model, [tokens.tolist(), short.tolist()], target=third)
    _same(sems[0].scores, sem.scores)


def _same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def _check_internals(family: Family, model: Any) -> None:
    """Layer 0 is the token scope; layer 1 against a brute force at the HF block's input."""
    tokens, ref, top, third = _setup(family)
    ids, last = tokens[None], len(tokens) - 1
    G1 = _layer_reference(family.name, tuple(tokens.tolist()), last, 1)
    for result, kind in ((tjs.semantic_scope(model, ids, target=third, internals=True), "semantic"),
                         (tjs.fisher_scope(model, ids, rank=None, internals=True), "fisher")):
        assert result.layer_scores is not None and result.head_scores is not None
        assert result.layer_scores.shape == (model.cfg.n_layers + 1, len(tokens))
        if not (family.leaf_is_raw_embedding or family.embedding_bypasses_layer0):
            assert_close(result.layer_scores[0], result.scores, 1e-5)
        if G1 is not None:
            expected = G1[third].norm(dim=-1) if kind == "semantic" else _fisher_from_logit_jacobian(G1, ref.p)
            assert_close(result.layer_scores[1], expected, RTOL)
        assert bool(torch.isfinite(result.head_scores).all())
        assert bool((result.head_scores[..., last + 1:] == 0).all())


def _fisher_from_logit_jacobian(G: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    Gp = torch.einsum("v,vti->ti", p, G)
    return torch.einsum("v,vti->t", p, G.pow(2)) - Gp.pow(2).sum(-1)


@functools.lru_cache(maxsize=None)
def _layer_reference(name: str, tokens: tuple[int, ...], position: int, layer: int) -> Any:
    return layer_jacobian(FAMILY_BY_NAME[name], tiny_family_model(name), torch.tensor(tokens), position, layer)


def _category(status: str) -> str:
    return status.split(":", 1)[0]


@functools.lru_cache(maxsize=None)
def _recorded() -> dict[str, Any]:
    """docs/architectures.md's statuses for the installed TransformerLens (empty for another version)."""
    from importlib.metadata import version

    installed = version("transformer-lens")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / f"architecture_matrix_tl{installed[0]}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    return data.get("families", {}) if data.get("versions", {}).get("transformer-lens") == installed else {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_architecture(name: str, backend: str) -> None:
    """Green (every scope equals the brute force) or refused by a ScopeError naming the family,
    and the same status as docs/architectures.md records for this TransformerLens version."""
    status = run_family(FAMILY_BY_NAME[name], backend)
    assert status == "green" or status.startswith(("green; internals refused: ", "refused: ")), status
    recorded = _recorded().get(name, {}).get(backend)
    if recorded is not None:
        assert _category(status) == _category(recorded), (
            f"{name} on {backend}: {status!r}, but docs/architectures.md says {recorded!r}: rerun "
            "benchmarks/architecture_matrix.py on both legs")
