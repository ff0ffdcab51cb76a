"""tjs.explain_generation: generated ids kept as they are, each generated token explained."""

import json
import warnings

import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result
from browser import BROWSER_REQUIRED, CHROMIUM, _chromium, _RenderedText
from pages import IMG, MARKERS, SCRIPT, TOKENS, assert_inert
from tiny_models import BACKENDS, assert_close, tiny_model
from tl_jacobian_scopes.models.access import hook_count

PROMPT = "The capital of France is"


def _state(model):
    return ([(n, m.training) for n, m in model.named_modules()], [p.requires_grad for p in model.parameters()],
            hook_count(model), torch.is_grad_enabled())


@pytest.fixture(scope="module")
def generation(default_model):
    """Four greedy tokens, explained under the user's set_grad_enabled(False) (restored after)."""
    before = _state(default_model)
    torch.set_grad_enabled(False)
    try:
        g = tjs.explain_generation(default_model, PROMPT, max_new_tokens=4)
        assert not torch.is_grad_enabled()  # the user's grad mode is left alone
    finally:
        torch.set_grad_enabled(True)
    assert _state(default_model) == before
    return g


def test_generated_ids_are_the_models_own(default_model, generation):
    ids = default_model.to_tokens(PROMPT)
    with torch.no_grad():
        own = default_model.generate(ids, max_new_tokens=4, do_sample=False, return_type="tokens", verbose=False,
                                     use_past_kv_cache=False)
        # Greedy means each generated token is the argmax of one plain forward pass over the sequence.
        sequence = torch.cat([ids[0], torch.tensor(generation.generated)]).unsqueeze(0)
        greedy = default_model(sequence)[0, ids.shape[1] - 1:-1].argmax(-1)
    assert generation.prompt_length == ids.shape[1]
    assert generation.generated == own[0, ids.shape[1]:].tolist() == greedy.tolist()
    assert generation.prompt_str_tokens == default_model.to_str_tokens(ids[0])
    assert len(generation) == 4 and generation.scores.shape == (4, ids.shape[1] + 4)


def test_each_row_equals_a_direct_semantic_call(default_model, generation):
    sequence = torch.tensor(generation.matrix[0].tokens.tolist())
    for i, token in enumerate(generation.generated):
        position = generation.prompt_length - 1 + i
        direct = tjs.semantic_scope(default_model, sequence, position=position, target=token)
        row = generation[i]
        assert row.position == position and row.target == token == direct.target
        assert_close(row.scores, direct.scores, rtol=1e-3)
        assert bool((row.scores[position + 1:] == 0).all())  # nothing after the explained token


def test_views_tables_and_files(generation, tmp_path):
    tops = generation.top(3)
    assert len(tops) == 4 and all(len(t) == 3 and t[0].score >= t[1].score for t in tops)
    frame = generation.to_dataframe()
    assert set(frame["step"]) == {0, 1, 2, 3}
    assert (frame["in_prompt"] == (frame["position"] < generation.prompt_length)).all()
    assert list(frame.groupby("step")["generated"].first()) == generation.generated_str_tokens
    back = tjs.results.GenerationResult.load_json(generation.save_json(tmp_path / "g.json"))
    assert back.generated == generation.generated and back.prompt_length == generation.prompt_length
    assert torch.equal(back.scores, generation.scores) and back.generation == generation.generation
    loaded = tjs.load(tmp_path / "g.json")  # the header names the type
    assert isinstance(loaded, tjs.results.GenerationResult) and loaded.generated == generation.generated
    data = json.loads((tmp_path / "g.json").read_text())
    data["generated"] = data["generated"][:-1]
    with pytest.raises(tjs.DataFileError, match="save_json"):
        tjs.results.GenerationResult.from_dict(data)
    assert "GenerationResult(scope='semantic'" in repr(generation) and repr(generation.generated_str_tokens[0]) in repr(generation)
    page = generation.save_html(tmp_path / "g.html").read_text(encoding="utf-8")
    assert "tjs-generation" in page and "4 generated token(s)" in page


def test_other_scopes_and_errors(default_model):
    fisher = tjs.explain_generation(default_model, default_model.to_tokens(PROMPT), 2, scope=tjs.fisher_scope, rank=2)
    assert fisher.scope == "fisher" and fisher[0].params["rank"] == 2 and len(fisher) == 2
    assert fisher[0].target_str == fisher.generated_str_tokens[0]  # greedy: the top token is the generated one
    with pytest.raises(tjs.OptionError, match="target"):
        tjs.explain_generation(default_model, PROMPT, 2, target=" Paris")
    with pytest.raises(tjs.OptionError, match="return_type"):
        tjs.explain_generation(default_model, PROMPT, 2, generate_kwargs={"return_type": "str"})
    with pytest.raises(tjs.OptionError, match="max_new_tokens"):
        tjs.explain_generation(default_model, PROMPT, 0)
    with pytest.raises(tjs.PromptError, match="one prompt"):
        tjs.explain_generation(default_model, [PROMPT, PROMPT], 2)
    with pytest.raises(tjs.PromptError, match="max_new_tokens"):
        tjs.explain_generation(default_model, PROMPT, default_model.cfg.n_ctx)
    with pytest.raises(tjs.UnknownScopeError, match="fisher"):
        tjs.explain_generation(default_model, PROMPT, 2, scope="fishr")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_on_tiny_models(backend):
    model = tiny_model("llama", backend)[0]
    torch.manual_seed(0)
    g = tjs.explain_generation(model, "the cat sat on the", 3, stop_at_eos=False,
                               generate_kwargs={"temperature": 2.0, "top_k": 20})
    assert g.generation["do_sample"] is True and len(g) == 3
    assert [r.target for r in g] == g.generated  # Semantic: the token actually sampled, not the top one


def test_generation_view_is_inert_with_hostile_tokens(tmp_path):
    prompt_length = 7
    matrix = tjs.results.ScopeMatrix([make_result(TOKENS, position=p, target_str=IMG + SCRIPT) for p in (6, 7, 8)])
    g = tjs.results.GenerationResult(matrix, prompt_length, [7, 8, 9], {"note": SCRIPT})
    text = assert_inert(g.show().to_html())
    assert SCRIPT in text  # the generation settings and tokens are shown as text
    from tl_jacobian_scopes.views import html as views_html

    first_display = not views_html._notebook["bundle_sent"]  # read before displaying: the display sets it
    assert_inert(g._repr_html_(), bundle=first_display)  # later displays: no bundle
    with pytest.raises(tjs.ScopeError, match="explain_generation"):
        tjs.results.GenerationResult(matrix, prompt_length, [7, 8])


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason="needs Chromium (apt-get install chromium)")
def test_generation_view_renders_in_a_real_browser(generation, tmp_path):
    assert CHROMIUM, "Chromium is required here (TJS_BROWSER_REQUIRED=1)"
    prompt_length = 7
    hostile = tjs.results.GenerationResult(
        tjs.results.ScopeMatrix([make_result(TOKENS, position=p, target_str=IMG) for p in (6, 7, 8)]), prompt_length, [7, 8, 9])
    view = generation.show()
    view.sections += hostile.show().sections
    path = view.save(tmp_path / "generation.html")
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()).stdout
    assert "tjs-generation" in dom and not any(marker in dom for marker in MARKERS)
    parser = _RenderedText()
    parser.feed(dom)
    assert len(parser.texts) == 2  # both CircuitsVis mounts were filled
    assert "capital" in parser.texts[0].replace("\xa0", " ") and "Paris" in parser.texts[0]
    assert "</script><script>document" in parser.texts[1]  # the hostile token, shown as text


def test_generated_text_fed_back_warns_where_it_can(default_model):
    """Decoded ids need not re-tokenize to themselves; the certain case (U+FFFD) warns, ids never do."""
    ids = default_model.to_tokens(PROMPT)[0].tolist() + [29] * 18  # 18 generated "-" tokens
    text = default_model.to_string(torch.tensor(ids[1:]))
    assert len(default_model.to_tokens(text, prepend_bos=False)[0]) < len(ids) - 1  # the loss of tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error", tjs.TokenizationWarning)
        tjs.temperature_scope(default_model, ids)  # ids: nothing to warn about
        tjs.temperature_scope(default_model, PROMPT)  # plain text that round-trips
    split = default_model.to_string(default_model.to_tokens("日本", prepend_bos=False)[0][:1])
    assert "\ufffd" in split, split  # a character split across byte tokens
    with pytest.warns(tjs.TokenizationWarning, match="U\\+FFFD.*token ids") as record:
        tjs.temperature_scope(default_model, PROMPT + split)
    assert len(record) == 1 and record[0].filename == __file__


# ---- the scope call is checked before generating -------------------------------------------------


def test_explain_generation_refuses_a_misspelt_option_before_generating(monkeypatch):
    model = tiny_model("llama", "bridge")[0]

    def generate(*args, **kwargs):
        raise AssertionError("generate() ran before the scope's options were checked")

    monkeypatch.setattr(model, "generate", generate)
    for scope, options, message in (
        ("fisher", {"rnak": 2}, "no option 'rnak'.*Did you mean 'rank'"),  # the scope's own message
        ("fisher", {"rank": 0}, "rank must be an int"),
        ("semantic", {"internals": "yes"}, "internals must be True or False"),
        ("semantic", {"batch_size": 0}, "batch_size must be an int"),
    ):
        with pytest.raises(tjs.OptionError, match=message):
            tjs.explain_generation(model, "the cat sat", 3, scope=scope, **options)
    with pytest.raises(tjs.TargetError, match="takes no target or contrast"):
        tjs.explain_generation(model, "the cat sat", 3, scope="fisher", contrast=" dog")
    # The direct call gives the same error for the same typo.
    with pytest.raises(tjs.OptionError, match="no option 'rnak'.*Did you mean 'rank'"):
        tjs.fisher_scope(model, "the cat sat", rnak=2)
