"""The memory guard: every option that scales the probes (samples, rank=None, positions,
batch_size) is counted before any allocation, and bounds on work (integration steps, the
TL_JACOBIAN_SCOPES_MEMORY_BUDGET variable) are checked with a clear error."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import TINY_TEXTS, tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


# ---- every option that scales the probes is counted ----------------------------------------------


@pytest.fixture
def no_probe_making(monkeypatch):
    """Making Fisher probes raises: a call the guard lets through never allocates them here."""
    from tl_jacobian_scopes.scopes import probes

    def refuse(*args, **kwargs):
        raise RuntimeError("the probes were being made: the guard let the call through")

    monkeypatch.setattr(probes, "fisher_sample_probes", refuse)
    monkeypatch.setattr(probes, "fisher_matrix", refuse)


def test_200000_fisher_samples_are_refused_by_the_guard_before_any_allocation(default_model, monkeypatch,
                                                                               no_probe_making):
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str(16 * 2**30))
    with pytest.raises(tjs.ScopeMemoryError, match=r"probe vectors .*samples=200000.*1[45]\d\.\d GiB.*samples="):
        tjs.fisher_scope(default_model, "The capital of France is", rank=None, samples=200_000, progress=False)


def test_exact_fisher_at_every_position_is_counted(default_model, monkeypatch, no_probe_making):
    """rank=None is d_model probes per position; positions='all' multiplies them (and their VJP groups)."""
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str(4 * 2**30))
    prompt = " ".join(["word"] * 60)
    with pytest.raises(tjs.ScopeMemoryError, match=r"576 per prediction, 6\d predictions at once.*positions="):
        tjs.fisher_scope(default_model, prompt, rank=None, positions="all", progress=False)


def test_the_batch_size_and_samples_enter_the_guard(tiny, monkeypatch):
    from tl_jacobian_scopes.scopes import engine

    prompts, samples = TINY_TEXTS[:4], 4000
    access = tjs.scopes.driver.ModelAccess(tiny)
    making = 16 * samples * access.d_vocab  # the Rademacher draws of one prediction
    one, four = (engine.probes_memory(access, samples + 8, n, 1, making) for n in (1, 4))
    assert four > 2 * one
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str(engine.scope_memory(access, 10) + (one + four) // 2))
    with pytest.raises(tjs.ScopeMemoryError, match="4 predictions at once.*batch_size="):
        tjs.fisher_scope(tiny, prompts, rank=None, samples=samples, progress=False)
    results = tjs.fisher_scope(tiny, prompts[:2], rank=None, samples=samples, batch_size=1, progress=False)
    assert len(results) == 2 and all(torch.isfinite(r.scores).all() for r in results)


# ---- bounds on work ------------------------------------------------------------------------------


def test_integration_steps_are_bounded_before_any_work():
    model = tiny_model("llama", "bridge")[0]
    for steps in (10**10, 2**63):
        with pytest.raises(tjs.OptionError, match="steps"):
            tjs.evaluation.integrated_gradients(model, TINY_TEXTS[1], steps=steps, progress=False)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "1e400", "0", "-1"])
def test_a_bad_memory_budget_variable_is_a_clear_error(monkeypatch, value):
    model = tiny_model("llama", "bridge")[0]
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", value)
    with pytest.raises(tjs.ScopeError, match="TL_JACOBIAN_SCOPES_MEMORY_BUDGET"):
        tjs.semantic_scope(model, TINY_TEXTS[1], progress=False)
