"""The HF twin of a TransformerBridge: a plain Hugging Face model that shares the bridge's own
parameter tensors, for code that needs plain HF attention (the forecast's key-value cache).
"""

from __future__ import annotations

from typing import Any

import torch


def hf_twin(model: Any) -> Any:
    """A plain Hugging Face model sharing the weights of a TransformerBridge's model, or None.

    The key-value cache that makes the forecast's branches cheap needs plain HF attention;
    a bridge wraps the HF modules in hooked components, so the same architecture is rebuilt
    (on the meta device: no copy, no initialisation) and given the bridge's own parameter
    tensors (``assign=True``: shared, so always in sync). Anything else (a model split over
    devices included) returns None and the branches run as full forward passes.
    """
    hf = getattr(model, "original_model", None)
    try:
        from transformers import AutoModelForCausalLM, PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if not isinstance(hf, PreTrainedModel):
        return None
    if len(set(map(str, (getattr(hf, "hf_device_map", None) or {}).values()))) > 1:
        return None  # split over devices: the rebuilt model would lack Accelerate's device-moving hooks
    try:
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(hf.config)  # type: ignore[no-untyped-call]
        wanted = plain.state_dict()
        state = {}
        for key, value in hf.state_dict(keep_vars=True).items():
            key = key.replace("._original_component", "")
            if key in wanted and key not in state and wanted[key].shape == value.shape:
                state[key] = value
        if set(state) != set(wanted):
            return None
        plain.load_state_dict(state, assign=True)
        # Non-persistent buffers (rotary frequencies) are not in a state dict: take the bridge's.
        buffers = {k.replace("._original_component", ""): b for k, b in hf.named_buffers()}
        for name, buf in list(plain.named_buffers()):
            if buf.is_meta:
                if name not in buffers or buffers[name].shape != buf.shape:
                    return None
                owner_name, _, attr = name.rpartition(".")
                owner = plain.get_submodule(owner_name) if owner_name else plain
                owner._buffers[attr] = buffers[name]
        if any(t.is_meta for t in list(plain.parameters()) + list(plain.buffers())):
            return None
        head, plain_head = hf.get_output_embeddings(), plain.get_output_embeddings()  # type: ignore[no-untyped-call]
        bias = getattr(head, "bias", None)
        if bias is not None and getattr(plain_head, "bias", None) is None and bool(bias.detach().abs().max() > 0):
            return None  # a bias the plain model would drop
    except Exception:  # an architecture we cannot rebuild: fall back to full forward passes
        return None
    return plain.eval()
