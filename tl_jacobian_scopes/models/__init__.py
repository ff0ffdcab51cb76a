"""Model access: loading TransformerLens models and reading them through their hooks."""

from .access import ModelAccess, backend_name, hook_count
from .inputs import prepare_tokens, resolve_position, resolve_token
from .loading import (
    DEFAULT_MODEL_NAME,
    bridge_from_hf,
    default_backend,
    has_hooked_transformer,
    hooked_from_hf,
    load_default_hf_model,
    load_default_model,
    load_model,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelAccess",
    "backend_name",
    "bridge_from_hf",
    "default_backend",
    "has_hooked_transformer",
    "hook_count",
    "hooked_from_hf",
    "load_default_hf_model",
    "load_default_model",
    "load_model",
    "prepare_tokens",
    "resolve_position",
    "resolve_token",
]
