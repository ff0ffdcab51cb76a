"""Asking for a device this machine or PyTorch build lacks gives a DeviceError naming the fix."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.models import loading


@pytest.mark.parametrize("load", [tjs.load_default_model, lambda device: tjs.load_model("gpt2", device=device)])
@pytest.mark.parametrize("device", ["cuda", "cuda:3", torch.device("cuda", 0), "mps", "xpu", "gpu", "meta"])
def test_missing_devices_fail_before_loading(monkeypatch, load, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(loading, "load_default_hf_model", lambda: pytest.fail("loaded before checking the device"))
    with pytest.raises(tjs.DeviceError, match="'cpu'") as exc:
        load(device=device)
    assert "AssertionError" not in str(exc.value) and isinstance(exc.value, tjs.ScopeError)


def test_a_gpu_index_beyond_the_machine_names_the_valid_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(tjs.DeviceError, match="1 CUDA device.*'cuda:0'"):
        loading.check_device("cuda:3")
    assert loading.check_device("cuda:0") == torch.device("cuda", 0)
