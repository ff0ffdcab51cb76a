"""The sweep loop shared by every per-record job: resume, share out, write, merge.

1. Every rank reads the merged file and all part files (before any rank writes) and
   decides the same to-do list; a barrier.
2. Each rank computes its share (:mod:`.sharding`) and appends each record to its own part
   file, flushed at once: a rank that dies loses at most the record it was computing.
3. A barrier; rank 0 merges everything into ``<stem>.jsonl`` (:func:`.records.merge`);
   a barrier; every rank returns the merged records.

Rank 0 shows one progress line for the whole job, counting the lines the other ranks have
appended to their part files; the other ranks show none.

Test hook: with ``TJS_SWEEP_DIE_AFTER=n`` (and ``TJS_SWEEP_DIE_RANK=r``, default 0) in the
environment, rank ``r`` exits abruptly (``os._exit(1)``) right after writing its ``n``-th
record, as a killed process would: the tests use it to check that a rerun resumes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..progress import Progress
from .distributed import Ranks, barrier
from .records import Layout, RecordCheck, drop_torn_tail, load_done, merge, read_records
from .sharding import Item, pending, shard

#: One record from one item; it must carry the item's ``"id"`` and ``"key"``.
Job = Callable[[Item], dict[str, Any]]


class LineCounter:
    """Whole lines appended to a set of files since the first :meth:`count`.

    Reads only bytes after the last line break already counted, so a cut-short last line
    that its writer later cuts off (before appending) is never skipped over.
    """

    def __init__(self, files: Callable[[], list[Path]]):
        self._files = files
        self._seen: dict[Path, tuple[int, int]] = {}  # path -> (offset after its last line break, lines)
        self._start: Optional[int] = None

    def count(self) -> int:
        total = 0
        for path in self._files():
            offset, lines = self._seen.get(path, (0, 0))
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except OSError:  # merged away or not there yet
                chunk = b""
            whole = chunk.rfind(b"\n") + 1
            self._seen[path] = (offset + whole, lines + chunk.count(b"\n", 0, whole))
            total += self._seen[path][1]
        if self._start is None:
            self._start = total
        return total - self._start


@dataclass
class Outcome:
    """What a sweep left: every merged record (sorted by id), how many this run computed
    (all ranks together) and the seconds rank 0 spent merging (0 on the other ranks)."""

    records: list[dict[str, Any]]
    computed: int
    merge_seconds: float


def _die_after() -> tuple[int, int]:
    """The test hook's ``(records, rank)``; ``(0, 0)`` when unset."""
    try:
        return int(os.environ.get("TJS_SWEEP_DIE_AFTER", "0")), int(os.environ.get("TJS_SWEEP_DIE_RANK", "0"))
    except ValueError:
        return 0, 0


def run_items(
    items: Sequence[Item],
    job: Job,
    layout: Layout,
    ranks: Ranks,
    check: Optional[RecordCheck] = None,
    desc: str = "sweep",
    unit: str = "records",
) -> Outcome:
    """Compute every item not already recorded, shared out over the ranks; merge.

    Args:
        items: Everything the sweep covers (done or not).
        job: Computes one item's record (``"id"`` and ``"key"`` included).
        layout: The records files.
        ranks: This process's rank (:func:`.distributed.process_group`).
        check: Called on every record read back; raises on one of another run.
        desc: The progress line's label.
        unit: What the progress line counts.

    Returns:
        The merged records (of these items and any others in the files), sorted by id.
    """
    done = load_done(layout, check)
    todo = pending(items, done.keys())
    mine = shard(todo, ranks.rank, ranks.world)
    counter = LineCounter(lambda: layout.parts(ranks.world))
    counter.count()  # the lines already there are not this run's progress
    barrier(ranks)  # every rank has read the files before any writes
    die_after, die_rank = _die_after()
    part = layout.part(ranks.rank, ranks.world)
    drop_torn_tail(part)
    total = len(pending(items, ()))
    already = total - len(todo)
    # Other ranks keep a silent line open: the scopes called inside stay silent too.
    with part.open("a", encoding="utf-8") as sink, \
            Progress(desc, total, unit, enabled=None if ranks.main else False) as bar:
        bar.set(already)
        for n, item in enumerate(mine, start=1):
            record = job(item)
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            if n == die_after and ranks.rank == die_rank:
                os._exit(1)
            bar.set(already + counter.count())
        barrier(ranks, (lambda: bar.set(already + counter.count())) if ranks.main else None)
        bar.set(total)
    start = time.perf_counter()
    merged = merge(layout) if ranks.main else []
    merge_seconds = time.perf_counter() - start if ranks.main else 0.0
    barrier(ranks)  # the merged file is complete
    if not ranks.main:
        merged = [r for _, r in read_records(layout.merged, "run the same command again")]
    return Outcome(merged, len(todo), merge_seconds)
