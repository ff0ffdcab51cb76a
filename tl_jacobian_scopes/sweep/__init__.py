"""Dataset-scale sweeps: any scope, baseline or benchmark job over many records, on
``torch.distributed`` (launched with ``torchrun``) or in one process, resumable.

Examples:
    >>> import json, tl_jacobian_scopes as tjs
    >>> _ = open("data.jsonl", "w").write(json.dumps({"text": "The capital of France is"}) + "\\n")
    >>> model = tjs.load_default_model(device=tjs.sweep.local_device())
    >>> summary = tjs.sweep.run(model, "data.jsonl", "results/", scope="semantic")

From a shell: ``torchrun --nproc_per_node 2 -m tl_jacobian_scopes.sweep data.jsonl --scope
fisher --out results/`` (see :mod:`.cli`).
"""

from .distributed import Ranks, environment_ranks, local_device, process_group
from .jobs import run
from .prompts import Prompt, read_prompts
from .records import Layout, StrictCheck, merge, record_key
from .runner import Outcome, run_items
from .sharding import Item, pending, shard

run_sweep = run

__all__ = [
    "Item",
    "Layout",
    "Outcome",
    "Prompt",
    "Ranks",
    "StrictCheck",
    "environment_ranks",
    "local_device",
    "merge",
    "pending",
    "process_group",
    "read_prompts",
    "record_key",
    "run",
    "run_items",
    "run_sweep",
    "shard",
]
