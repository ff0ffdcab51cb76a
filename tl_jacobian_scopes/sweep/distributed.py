"""The process group of a sweep: set up from ``torchrun``'s environment, or none at all.

``torchrun`` (and ``accelerate launch``, which wraps it) starts one process per rank with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; the
process group is created from them (``init_method="env://"``): NCCL when the model is on
CUDA, gloo otherwise. Without those variables a sweep is one plain process and no group
is created. The sweep only synchronizes (barriers), always through a gloo group, so that
rank 0 can keep its progress line moving while it waits for the others.

Examples:
    >>> with process_group(torch.device("cpu")) as ranks:
    ...     ranks.rank, ranks.world
    (0, 1)
"""

from __future__ import annotations

import inspect
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional, Union

import torch

from ..errors import OptionError

#: How long a rank waits for the others at a barrier (the slowest rank's remaining work).
BARRIER_TIMEOUT = timedelta(hours=24)
#: Seconds between two looks at the other ranks' progress while waiting.
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Ranks:
    """This process's place in the sweep.

    Attributes:
        rank: Global rank (0 merges and shows progress).
        world: Number of processes.
        local_rank: Rank on this machine (picks the GPU).
        group: The gloo process group used for barriers; None for one plain process.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"The environment variable {name}={value!r} is not an integer: launch with torchrun, "
                          "which sets it, or unset it for a single process.") from None


def launched() -> bool:
    """True when this process is one rank of a ``torchrun`` launch (``WORLD_SIZE`` and ``RANK`` set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def environment_ranks() -> Ranks:
    """Rank, world size and local rank from the environment (``0, 1, 0`` without torchrun).

    Raises:
        OptionError: a variable that is not an integer, or a rank outside the world.
    """
    if not launched():
        return Ranks()
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise OptionError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a rank of a world: "
                          "launch with torchrun, which sets them consistently.")
    return Ranks(rank, world, local)


def local_device(requested: Union[str, torch.device, None] = None) -> torch.device:
    """The device this rank's model goes on.

    ``None``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. ``"cuda"`` without
    an index also becomes ``cuda:LOCAL_RANK``; anything else is returned as given.

    Examples:
        >>> local_device("cpu")
        device(type='cpu')
    """
    local = environment_ranks().local_rank
    if requested is None:
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local)
    return device


@contextmanager
def process_group(device: Optional[torch.device] = None) -> Iterator[Ranks]:
    """This rank's :class:`Ranks`, with the process group set up for the block.

    Under torchrun the default group is created (NCCL for a CUDA ``device``, gloo otherwise)
    unless the caller already made one, and destroyed afterwards only if created here.
    Without torchrun nothing is created.
    """
    ranks = environment_ranks()
    if ranks.world == 1 and not torch.distributed.is_initialized():
        yield ranks
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        cuda = device is not None and device.type == "cuda"
        # device_id (torch >= 2.3) binds NCCL to this rank's GPU from the start.
        bind: dict[str, Any] = {"device_id": device} if cuda and "device_id" in inspect.signature(dist.init_process_group).parameters else {}
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT, **bind)
    try:
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
        yield Ranks(dist.get_rank(), dist.get_world_size(), ranks.local_rank, group or dist.group.WORLD)
    finally:
        if created:
            dist.destroy_process_group()


def barrier(ranks: Ranks, while_waiting: Optional[Callable[[], None]] = None) -> None:
    """Wait until every rank gets here, calling ``while_waiting`` now and then meanwhile.

    Raises:
        RuntimeError: (from PyTorch) another rank failed or :data:`BARRIER_TIMEOUT` passed.
    """
    if ranks.group is None:
        return
    import torch.distributed as dist

    work = dist.barrier(group=ranks.group, async_op=True)
    assert work is not None  # this rank is in the group
    while while_waiting is not None and not work.is_completed():
        while_waiting()
        time.sleep(POLL_SECONDS)
    work.wait()
