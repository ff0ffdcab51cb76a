"""Baselines, interventions and the AOPC protocol, against independent computations."""

import copy
import json

import pytest
import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes import errors as E
from tiny_models import BACKENDS, tiny_model
from tl_jacobian_scopes.evaluation import aopc, deletion_deltas, loo_percentile
from tl_jacobian_scopes.evaluation import faithfulness as F

PROMPT = "the cat sat on the mat and the dog ran to the"


@pytest.fixture(scope="module", params=BACKENDS)
def tiny(request):
    model, hf = tiny_model("llama", request.param)
    ref = copy.deepcopy(hf).double().eval()
    return model, ref


@torch.no_grad()
def _hf_logprobs(ref, tokens, embeds_fn, position):
    """log p at ``position`` from the plain HF model with edited input embeddings (float64)."""
    embeds = embeds_fn(ref.get_input_embeddings()(tokens[None]).detach())
    return torch.log_softmax(ref(inputs_embeds=embeds).logits[0, position], -1)


def test_ablation_hooks_match_edited_embeddings(tiny):
    model, ref = tiny
    tokens = model.to_tokens(PROMPT)[0]
    for replacement in ("zero", "mean", 5):
        hooks = tjs.evaluation.ablate_positions([2, 4], replacement, model)
        got = torch.log_softmax(model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0, -1].double(), -1)
        W_E = ref.get_input_embeddings().weight.detach()
        fill = {"zero": torch.zeros(W_E.shape[1], dtype=W_E.dtype), "mean": W_E.mean(0), 5: W_E[5]}[replacement]

        def edit(e):
            e = e.clone()
            e[0, [2, 4]] = fill
            return e

        torch.testing.assert_close(got, _hf_logprobs(ref, tokens, edit, -1), rtol=1e-4, atol=1e-4)


def test_patching_everything_recovers_clean_and_nothing_changes_nothing(tiny):
    model, _ = tiny
    clean, corrupt = model.to_tokens("the cat sat on the mat"), model.to_tokens("the dog sat on the mat")
    _, cache = model.run_with_cache(clean)
    with torch.no_grad():
        clean_logits, corrupt_logits = model(clean), model(corrupt)
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        patched = model.run_with_hooks(corrupt, fwd_hooks=tjs.patching.patch_activations(cache, [(last, None, None)]))
        torch.testing.assert_close(patched, clean_logits)
        same = tjs.patching.patch_activations(cache, [("blocks.0.hook_resid_pre", 3, None)])
        torch.testing.assert_close(model.run_with_hooks(corrupt, fwd_hooks=same), corrupt_logits)  # position 3 is equal
        head = tjs.patching.patch_activations(cache, [("blocks.1.attn.hook_z", 2, 1)])
        assert not torch.allclose(model.run_with_hooks(corrupt, fwd_hooks=head), corrupt_logits)


def test_gradient_x_input_matches_autograd(tiny):
    model, ref = tiny
    tokens = model.to_tokens(PROMPT)[0]
    r = tjs.evaluation.gradient_x_input(model, PROMPT, target="dog", position=8)
    x = ref.get_input_embeddings()(tokens[None]).detach().requires_grad_(True)
    logp = torch.log_softmax(ref(inputs_embeds=x).logits[0, 8], -1)[r.target]
    (g,) = torch.autograd.grad(logp, x)
    expected = (g * x)[0].norm(dim=-1)
    torch.testing.assert_close(r.scores.double(), expected, rtol=1e-4, atol=1e-6)
    assert r.scope == "gxi" and torch.all(r.scores[9:] == 0)


@pytest.fixture(scope="module")
def tiny_gpt2():
    model, hf = tiny_model("gpt2", "bridge")
    return model, copy.deepcopy(hf).double().eval()


@pytest.mark.parametrize("objective", ["logprob", "logit"])
def test_integrated_gradients_completeness(tiny_gpt2, objective):
    """IG's completeness axiom: attributions summed over tokens and d equal L(x) - L(0).

    On GPT-2 (the embedding enters LayerNorm together with learned positions, so L(αx) is
    smooth in α). A Llama-like model normalizes αx directly, which makes L jump at α≈0
    (only the norm's eps separates L(0) from L(0+)), a known blind spot of IG's path."""
    model, ref = tiny_gpt2
    tokens = model.to_tokens(PROMPT)[0]
    fn = tjs.evaluation.integrated_gradients if objective == "logprob" else tjs.evaluation.path_semantic_scope
    kwargs = dict(objective=objective) if objective == "logprob" else {}
    r = fn(model, PROMPT, target="dog", steps=256, reduce="sum", **kwargs)
    base = ref.get_input_embeddings()(tokens[None]).detach()
    head = ref.get_output_embeddings().weight.detach()

    @torch.no_grad()
    def L(scale):
        out = ref(inputs_embeds=base * scale, output_hidden_states=True)
        if objective == "logprob":
            return torch.log_softmax(out.logits[0, -1], -1)[r.target]
        return out.hidden_states[-1][0, -1] @ head[r.target]

    assert float(r.scores.sum()) == pytest.approx(float(L(1.0) - L(0.0)), rel=2e-3, abs=2e-4)


def test_integrated_gradients_equals_a_loop_over_the_path(tiny):
    model, ref = tiny
    tokens = model.to_tokens(PROMPT)[0]
    r = tjs.evaluation.integrated_gradients(model, PROMPT, target="dog", steps=4)
    base = ref.get_input_embeddings()(tokens[None]).detach()
    total = torch.zeros_like(base)
    for alpha in (0.125, 0.375, 0.625, 0.875):
        x = (alpha * base).requires_grad_(True)
        (g,) = torch.autograd.grad(torch.log_softmax(ref(inputs_embeds=x).logits[0, -1], -1)[r.target], x)
        total += g / 4
    torch.testing.assert_close(r.scores.double(), (base * total)[0].norm(dim=-1), rtol=1e-4, atol=1e-6)


def test_leave_one_out_matches_manual_kl(tiny):
    model, ref = tiny
    tokens = model.to_tokens(PROMPT)[0]
    r = tjs.evaluation.leave_one_out(model, PROMPT, position=7, batch_size=3)
    p = torch.exp(_hf_logprobs(ref, tokens, lambda e: e, 7))
    for t in (0, 4, 7):
        def edit(e, t=t):
            e = e.clone()
            e[0, t] = 0
            return e

        kl = (p * (p.log() - _hf_logprobs(ref, tokens, edit, 7))).sum()
        assert float(r.scores[t]) == pytest.approx(float(kl), rel=1e-3, abs=1e-6)
    assert torch.all(r.scores[8:] == 0)


def test_random_attribution_is_seeded():
    model, _ = tiny_model("gpt2", "bridge")
    a, b = tjs.evaluation.random_attribution(model, PROMPT, seed=3), tjs.evaluation.random_attribution(model, PROMPT, seed=3)
    assert torch.equal(a.scores, b.scores) and not torch.equal(a.scores, tjs.evaluation.random_attribution(model, PROMPT, seed=4).scores)


def test_aopc_formula_and_deletions(tiny):
    model, ref = tiny
    assert aopc([-1.0, -2.0, -4.0]) == pytest.approx(0.025 * -3 + 0.05 * -6)
    tokens = model.to_tokens(PROMPT)[0]
    position, target = len(tokens) - 2, 7
    scores = {"first": torch.arange(len(tokens), 0, -1).float()}  # prefers early positions (BOS highest)
    deltas = deletion_deltas(model, tokens, position, target, scores, has_bos=True)["first"]
    n_text = len(tokens) - 1
    p0 = _hf_logprobs(ref, tokens, lambda e: e, position)[target]
    for d, f in zip(deltas, (0.05, 0.1, 0.2)):
        n = max(1, int(n_text * f))

        def edit(e, n=n):
            e = e.clone()
            e[0, 1 : 1 + n] = 0  # BOS is never ablated: positions 1..n
            return e

        assert d == pytest.approx(float(_hf_logprobs(ref, tokens, edit, position)[target] - p0), abs=1e-4)
    pool = torch.arange(1, position + 1)
    loo = torch.zeros(len(tokens))
    loo[5] = 1.0
    assert loo_percentile(loo, loo, pool) == 0.0
    assert loo_percentile(scores["first"], loo, pool) == pytest.approx(100 / len(pool))


def test_benchmark_runner_resumes_and_summarizes(tmp_path, monkeypatch):
    model, _ = tiny_model("llama", "bridge")
    data = tmp_path / "set.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in [PROMPT, "the dog ran to the big red house", "we love the food of the city"]))
    out = tmp_path / "out"
    calls = []
    real = F.evaluate_text

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "evaluate_text", counting)
    F.run(model, data, out, n=2, ig_steps=4)
    assert len(calls) == 2
    summary = F.run(model, data, out, n=3, ig_steps=4)  # resumes: only the third text is new
    assert len(calls) == 3 and summary["n_prompts"] == 3
    records = [json.loads(line) for line in (out / "set.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [0, 1, 2]
    assert set(records[0]["aopc"]) == set(F.METHODS) and "loo_percentile" in records[0]
    row = summary["methods"]["fisher"]
    values = [r["aopc"]["fisher"] for r in records]
    assert row["aopc_mean"] == pytest.approx(sum(values) / 3)
    diffs = [r["aopc"]["fisher"] - r["aopc"]["gxi"] for r in records]
    assert row["paired_vs_gxi"]["mean"] == pytest.approx(sum(diffs) / 3)
    assert (out / "set_summary.md").read_text().startswith("### set (n = 3)")
    assert (out / "set_curves.png").stat().st_size > 1000

    # A kill mid-write leaves half a line: it is dropped and that text is evaluated again.
    whole = (out / "set.jsonl").read_text()
    (out / "set.jsonl").write_text(whole[: whole.rstrip("\n").rfind("\n") + 1] + '{"id": 2, "aop')
    F.run(model, data, out, n=3, ig_steps=4)
    assert len(calls) == 4
    assert [json.loads(line)["id"] for line in (out / "set.jsonl").read_text().splitlines()] == [0, 1, 2]
    with pytest.raises(ValueError, match="--methods"):
        F.run(model, data, out, n=3, methods=("random", "gxi"), ig_steps=4)
    assert len(calls) == 4


def test_summary_markdown_puts_the_paper_beside_ours():
    records = [{"aopc": {"random": -0.2 - i / 10, "gxi": -1.0 - i / 10, "fisher": -1.1 - i / 10},
                "deltas": {m: [-1.0, -2.0, -3.0] for m in ("random", "gxi", "fisher")},
                "loo_percentile": {"random": 50.0, "gxi": 10.0, "fisher": 5.0 + i}} for i in range(4)]
    summary = F.summarize(records)
    assert summary["methods"]["fisher"]["times_random"] == pytest.approx(-1.25 / -0.35)
    assert summary["methods"]["fisher"]["paired_vs_gxi"]["mean"] == pytest.approx(-0.1)
    assert summary["methods"]["fisher"]["paired_vs_gxi"]["share_better"] == 1.0
    table = F.summary_markdown(summary, "lambada_1000").splitlines()
    fisher = next(line for line in table if line.startswith("| fisher"))
    assert "-1.250 ± 0.065" in fisher and "| -1.320 |" in fisher and "5.45" in fisher and "6.5 ± 0.6" in fisher
    assert "| — | — |" in next(line for line in F.summary_markdown(summary, "other").splitlines() if line.startswith("| fisher"))


def test_patch_top_recovers_all_or_nothing(tiny):
    from tl_jacobian_scopes.evaluation.patching import patch_top

    model, _ = tiny
    clean, corrupt = "the cat sat on the mat", "the dog sat on the mat"
    r = tjs.semantic_scope(model, clean, target="cat", contrast="dog", internals=True)
    n = len(r.str_tokens)
    assert patch_top(model, clean, corrupt, r, k=n).recovered == pytest.approx(1.0, abs=1e-5)
    assert patch_top(model, clean, corrupt, r, k=0).recovered == pytest.approx(0.0, abs=1e-6)
    heads = patch_top(model, clean, corrupt, r, k=model.cfg.n_layers * model.cfg.n_heads, site="head")
    assert heads.ld_clean != heads.ld_corrupted and len(heads.patched) == model.cfg.n_layers * model.cfg.n_heads
    with pytest.raises(tjs.PromptError, match="same number of tokens"):
        patch_top(model, clean, "the dog sat on the big mat", r, k=1)
    # A tensor of scores ranks the sites: [pos] positions, [n_layers, n_heads] heads.
    only_cat = torch.zeros(n)
    only_cat[2] = 1.0  # 'cat' vs 'dog' is the only differing token
    outcome = patch_top(model, clean, corrupt, only_cat, k=1, answer="cat", wrong="dog")
    assert outcome.patched == [2] and outcome.recovered == pytest.approx(1.0, abs=1e-5)
    per_head = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    per_head[1, 2] = 1.0
    outcome = patch_top(model, clean, corrupt, per_head, k=1, answer="cat", wrong="dog")
    assert outcome.patched == [(1, 2)]
    manual = tjs.patching.patching_map(model, clean, corrupt, "cat", "dog", site="head")[1, 2]
    assert outcome.recovered == pytest.approx(float(manual), abs=1e-5)
    with pytest.raises(E.TargetError, match="answer= and wrong="):
        patch_top(model, clean, corrupt, per_head, k=1)


def test_residual_patching_map_extremes(tiny):
    from tl_jacobian_scopes.evaluation.patching import residual_patching_map

    model, _ = tiny
    effect = residual_patching_map(model, "the cat sat on the mat", "the dog sat on the mat", "cat", "dog", batch_size=5)
    assert effect.shape == (model.cfg.n_layers, len(model.to_tokens("the cat sat on the mat")[0]))
    # Layer 0 at the one differing position (2: 'cat' vs 'dog') restores everything; identical positions nothing.
    assert float(effect[0, 2]) == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(effect[0, [0, 1, 3, 4, 5, 6]], torch.zeros(6), atol=1e-5)


def test_residual_patching_map_matches_transformer_lens_patching(tiny):
    """Our batched patching against TransformerLens's own (one patched forward per cell)."""
    patching = pytest.importorskip("transformer_lens.patching")
    from tl_jacobian_scopes.evaluation.patching import logit_difference, residual_patching_map

    model, _ = tiny
    clean, corrupted = "the cat sat on the mat", "the dog sat on the red"
    cat, dog = (int(model.to_single_token(w)) for w in ("cat", "dog"))
    ours = residual_patching_map(model, clean, corrupted, "cat", "dog", batch_size=7)
    clean_tokens, corrupted_tokens = model.to_tokens(clean), model.to_tokens(corrupted)
    _, cache = model.run_with_cache(clean_tokens)
    ld_clean = float(logit_difference(model, clean_tokens, cat, dog)[0])
    ld_corrupted = float(logit_difference(model, corrupted_tokens, cat, dog)[0])

    def restored(logits):
        return (logits[0, -1, cat] - logits[0, -1, dog] - ld_corrupted) / (ld_clean - ld_corrupted)

    theirs = patching.get_act_patch_resid_pre(model, corrupted_tokens, cache, restored)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours.values, theirs.float().cpu(), rtol=1e-4, atol=1e-4)
    assert ours.values.abs().max() > 0.1  # the map is not trivially zero

    heads = tjs.patching.patching_map(model, clean, corrupted, "cat", "dog", site="head", batch_size=5)
    theirs = patching.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, cache, restored)
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    torch.testing.assert_close(heads.values, theirs.float().cpu(), rtol=1e-4, atol=1e-4)
    assert heads.values.abs().max() > 0.01


def test_attribution_patching_is_the_directional_derivative_of_patching(tiny):
    """Each cell's estimate equals d/dε LD(a_corrupted + ε (a_clean - a_corrupted)) at ε = 0,
    measured by central finite differences of real patched forward passes (no autograd)."""
    from tl_jacobian_scopes.evaluation.patching import logit_difference

    model, _ = tiny
    clean, corrupted = "the cat sat on the mat", "the dog sat on the red"
    cat, dog = (int(model.to_single_token(w)) for w in ("cat", "dog"))
    estimate = tjs.patching.attribution_patching_map(model, clean, corrupted, "cat", "dog")
    clean_tokens, corrupted_tokens = model.to_tokens(clean), model.to_tokens(corrupted)
    _, clean_cache = model.run_with_cache(clean_tokens)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    gap = float(logit_difference(model, clean_tokens, cat, dog)[0] - logit_difference(model, corrupted_tokens, cat, dog)[0])
    assert estimate.shape == (model.cfg.n_layers, clean_tokens.shape[-1])
    eps = 1e-2
    for layer, pos in [(0, 2), (1, 2), (1, 5), (0, 0)]:
        name = f"blocks.{layer}.hook_resid_pre"
        delta = clean_cache[name][0, pos] - corrupted_cache[name][0, pos]

        def shifted(scale):
            def hook(act, hook):
                act = act.clone()
                act[0, pos] += scale * delta
                return act
            return float(logit_difference(model, corrupted_tokens, cat, dog, [(name, hook)])[0])

        derivative = (shifted(eps) - shifted(-eps)) / (2 * eps)
        assert float(estimate[layer, pos]) * gap == pytest.approx(derivative, rel=2e-2, abs=1e-4)
    heads = tjs.patching.attribution_patching_map(model, clean, corrupted, "cat", "dog", site="head")
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    for layer, head in [(0, 0), (1, 1), (1, 3)]:
        name = f"blocks.{layer}.attn.hook_z"
        delta = clean_cache[name][0, :, head] - corrupted_cache[name][0, :, head]

        def shifted_head(scale):
            def hook(act, hook):
                act = act.clone()
                act[0, :, head] += scale * delta
                return act
            return float(logit_difference(model, corrupted_tokens, cat, dog, [(name, hook)])[0])

        derivative = (shifted_head(eps) - shifted_head(-eps)) / (2 * eps)
        assert float(heads[layer, head]) * gap == pytest.approx(derivative, rel=2e-2, abs=1e-4)
    # Cells that hold the same activation in both runs: before the first differing token at every
    # layer, and the unchanged tokens at layer 0 (later layers mix in the changed ones).
    assert torch.all(estimate[:, :2].abs() < 1e-5) and torch.all(estimate[0, [3, 4]].abs() < 1e-5)
    assert estimate[0, 2].abs() > 1e-3


def test_ablate_positions_outside_the_prompt_is_a_position_error(tiny):
    model, _ = tiny
    tokens = model.to_tokens("the cat sat on the mat")  # 7 tokens with BOS
    n = tokens.shape[-1]
    with pytest.raises(E.PositionError, match=f"0..{n - 1}"):  # was an IndexError from inside the hook
        model.run_with_hooks(tokens, fwd_hooks=tjs.evaluation.ablate_positions([99]))
    with pytest.raises(E.PositionError, match="outside"):  # the model's context bounds it before any run
        tjs.evaluation.ablate_positions([model.cfg.n_ctx], model=model)
    with pytest.raises(E.PositionError, match="ints"):
        tjs.evaluation.ablate_positions([1.5])
    with pytest.raises(E.PositionError, match="mask"):
        model.run_with_hooks(tokens, fwd_hooks=tjs.evaluation.ablate_positions(torch.zeros(1, n + 1, dtype=torch.bool)))
    # negative positions count from the end, like Python
    last = model.run_with_hooks(tokens, fwd_hooks=tjs.evaluation.ablate_positions([-1]))
    torch.testing.assert_close(last, model.run_with_hooks(tokens, fwd_hooks=tjs.evaluation.ablate_positions([n - 1])))


def test_bad_ablation_replacements_are_option_errors(tiny):
    model, _ = tiny
    for replacement, message in [("median", "'zero', 'mean'"), (model.cfg.d_vocab, "vocabulary"),
                                 (torch.zeros(3), "shape"), (0.5, "float")]:
        with pytest.raises(E.OptionError, match=message):
            tjs.evaluation.ablate_positions([1], replacement, model)
    with pytest.raises(E.OptionError, match="model="):
        tjs.evaluation.ablate_positions([1], "mean")
    with pytest.raises(E.NonFiniteError):
        tjs.evaluation.ablate_positions([1], torch.full((model.cfg.d_model,), float("nan")), model)


def test_patch_activations_checks_its_sites(tiny):
    model, _ = tiny
    tokens = model.to_tokens("the cat sat on the mat")
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(E.MissingHookError, match="no activation"):
        tjs.patching.patch_activations(cache, [("blocks.0.hook_nothing", 1, None)])
    with pytest.raises(E.PositionError, match="outside"):
        tjs.patching.patch_activations(cache, [("blocks.0.hook_resid_pre", 99, None)])
    with pytest.raises(E.OptionError, match="head"):
        tjs.patching.patch_activations(cache, [("blocks.0.attn.hook_z", 1, model.cfg.n_heads)])
    with pytest.raises(E.OptionError, match="no head dimension"):
        tjs.patching.patch_activations(cache, [("blocks.0.hook_resid_pre", 1, 0)])
    hooks = tjs.patching.patch_activations(cache, [("blocks.0.hook_resid_pre", None, None)])
    with pytest.raises(E.PromptError, match="same number of tokens"):
        model.run_with_hooks(model.to_tokens("the cat sat"), fwd_hooks=hooks)


CLEAN, CORRUPT = "the cat sat on the mat", "the dog sat on the mat"


def test_patch_top_k_must_count_sites(tiny):
    from tl_jacobian_scopes.evaluation.patching import patch_top

    model, _ = tiny
    n = len(model.to_tokens(CLEAN)[0])
    scores = torch.arange(n, dtype=torch.float)
    for k in (-1, n + 1, 1.5, True):  # k=-1 used to patch all but one position
        with pytest.raises(E.OptionError, match=f"0 to {n}"):
            patch_top(model, CLEAN, CORRUPT, scores, k=k, answer="cat", wrong="dog")
    with pytest.raises(E.OptionError, match="shape"):
        patch_top(model, CLEAN, CORRUPT, torch.ones(n + 2), k=1, answer="cat", wrong="dog")
    with pytest.raises(E.NonFiniteError):
        patch_top(model, CLEAN, CORRUPT, torch.full((n,), float("nan")), k=1, answer="cat", wrong="dog")


def test_patching_refuses_pairs_without_a_gap(tiny, monkeypatch):
    """answer == wrong, identical prompts and an unchanged logit difference used to give NaN/inf."""
    from tl_jacobian_scopes.evaluation import patching

    model, _ = tiny
    n = len(model.to_tokens(CLEAN)[0])
    calls = [
        lambda c, k, a, w: tjs.patching.patching_map(model, c, k, a, w),
        lambda c, k, a, w: tjs.patching.patching_map(model, c, k, a, w, site="head"),
        lambda c, k, a, w: tjs.patching.attribution_patching_map(model, c, k, a, w),
        lambda c, k, a, w: tjs.patching.patch_top(model, c, k, torch.ones(n), k=1, answer=a, wrong=w),
    ]
    for call in calls:
        with pytest.raises(E.TargetError, match="same token"):
            call(CLEAN, CORRUPT, "cat", "cat")
        with pytest.raises(E.PromptError, match="same tokens"):
            call(CLEAN, CLEAN, "cat", "dog")
        with pytest.raises(E.PromptError, match="same number of tokens"):
            call(CLEAN, "the dog sat on the big mat", "cat", "dog")
    monkeypatch.setattr(patching, "logit_difference", lambda *args, **kwargs: torch.tensor([0.25]))
    with pytest.raises(E.TargetError, match="no gap"):
        tjs.patching.patching_map(model, CLEAN, CORRUPT, "cat", "dog")


def test_bad_patching_options_are_option_errors(tiny):
    model, _ = tiny
    for site in ("resid", "position", None):
        with pytest.raises(E.OptionError, match="site"):
            tjs.patching.patching_map(model, CLEAN, CORRUPT, "cat", "dog", site=site)
        with pytest.raises(E.OptionError, match="site"):
            tjs.patching.attribution_patching_map(model, CLEAN, CORRUPT, "cat", "dog", site=site)
    r = tjs.semantic_scope(model, CLEAN, target="cat", contrast="dog")
    with pytest.raises(E.OptionError, match="site"):
        tjs.patching.patch_top(model, CLEAN, CORRUPT, r, k=1, site="layer")
    for batch_size in (0, -3, 2.0):
        with pytest.raises(E.OptionError, match="batch_size"):
            tjs.patching.patching_map(model, CLEAN, CORRUPT, "cat", "dog", batch_size=batch_size)


def test_a_model_without_the_patched_hooks_is_a_missing_hook_error(tiny, monkeypatch):
    model, _ = tiny
    run = model.run_with_cache
    monkeypatch.setattr(model, "run_with_cache", lambda tokens, **kwargs: (run(tokens)[0], {}))  # was a KeyError
    with pytest.raises(E.MissingHookError, match="hook_resid_pre"):
        tjs.patching.patching_map(model, CLEAN, CORRUPT, "cat", "dog")
    with pytest.raises(E.MissingHookError, match="hook_z"):
        tjs.patching.attribution_patching_map(model, CLEAN, CORRUPT, "cat", "dog", site="head")


def test_cells_patching_cannot_move_are_exactly_zero(tiny):
    """Before the first differing token (and at layer 0 on unchanged tokens) the clean and
    corrupted activations are equal: the map is exactly 0 there, not batching noise whose
    sign would order these cells arbitrarily in a rank correlation."""
    from tl_jacobian_scopes.evaluation.patching import movable_cells

    model, _ = tiny
    clean, corrupted = "the cat sat on the mat", "the cat sat on the red"
    effect = tjs.patching.patching_map(model, clean, corrupted, "cat", "dog", batch_size=3)
    mask = movable_cells(model, clean, corrupted)
    first = int((model.to_tokens(clean)[0] != model.to_tokens(corrupted)[0]).nonzero()[0])
    assert mask.shape == effect.shape and not mask[:, :first].any() and mask[:, first:].all()
    assert torch.equal(effect[~mask], torch.zeros(int((~mask).sum())))
    assert effect[mask].abs().max() > 1e-3


def test_spearman_gives_ties_their_average_rank():
    from tl_jacobian_scopes.evaluation.patching import spearman

    a = torch.tensor([[0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 2.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.1, 0.7]])
    ra = torch.tensor([3.0, 3, 3, 8, 3, 3, 7, 6], dtype=torch.float64)
    rb = torch.tensor([3.0, 3, 3, 7, 3, 3, 6, 8], dtype=torch.float64)  # average ranks
    expected = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    # the value cannot depend on where the tied cells sit (argsort().argsort() made it depend on that)
    for seed in range(5):
        order = torch.randperm(a.numel(), generator=torch.Generator().manual_seed(seed))
        assert spearman(a.flatten()[order], b.flatten()[order]) == pytest.approx(expected, abs=1e-12)
    mask = torch.tensor([[False, False, False, True], [False, False, True, True]])
    assert spearman(a, b, mask=mask) == pytest.approx(-0.5)  # ranks (3, 2, 1) vs (2, 1, 3)
    assert spearman(torch.ones(4), torch.arange(4.0)) != spearman(torch.ones(4), torch.arange(4.0))  # nan
    with pytest.raises(E.OptionError, match="same shape"):
        spearman(a, b.flatten())
    with pytest.raises(E.OptionError, match="mask"):
        spearman(a, b, mask=mask.float())
    with pytest.raises(E.OptionError, match="at least 2"):
        spearman(a, b, mask=torch.zeros_like(mask))
    with pytest.raises(E.NonFiniteError):
        spearman(a, b * float("inf"))
