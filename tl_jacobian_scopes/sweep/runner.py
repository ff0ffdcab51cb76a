"""The sweep loop shared by every per-record job: resume, share out, write, merge.

1. Every rank reads the merged file and all part files (before any rank writes) and
   decides the same to-do list; a barrier.
2. Each rank computes its share (:mod:`.sharding`) and appends each record to its own part
   file, flushed at once: a rank that dies loses at most the record it was computing.
3. A barrier; rank 0 merges everything into ``<stem>.jsonl`` (:func:`.records.merge`);
   a barrier; every rank returns the merged records.

The sweep holds its folder's lock (:mod:`.lock`) from before it reads the records until the
merge is done: a second sweep into the same folder is refused (the ranks of one torchrun job
share the lock). A record that cannot be appended (a full disk) stops the sweep with an
:class:`~tl_jacobian_scopes.errors.OutputPathError`; the part file keeps every whole record
written before it, for the next run to resume from.

Rank 0 shows one progress line for the whole job, counting the lines the other ranks have
appended to their part files; the other ranks show none.

Test hook: with ``TJS_SWEEP_DIE_AFTER=n`` (and ``TJS_SWEEP_DIE_RANK=r``, default 0) in the
environment, rank ``r`` exits abruptly (``os._exit(1)``) right after writing its ``n``-th
record, as a killed process would: the tests use it to check that a rerun resumes.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import FolderLockedError, OutputPathError
from ..progress import Progress
from .distributed import Ranks, barrier
from .lock import locked_message, release, try_lock
from .records import Layout, RecordCheck, drop_torn_tail, load_done, merge_held, read_records
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


def append_record(sink: io.RawIOBase, record: dict[str, Any], path: Path, written: int) -> None:
    """Append one record's line to ``sink`` (unbuffered), all of it or none of it.

    Raises:
        OutputPathError: the line could not be written whole (a full disk): a part written is
            cut off again, so the file ends with the ``written`` records before it.
    """
    view = memoryview((json.dumps(record) + "\n").encode("utf-8"))
    start = sink.tell()
    try:
        while view:
            n = sink.write(view)
            view = view[n or 0:]
    except OSError as exc:
        try:
            sink.truncate(start)
        except OSError:  # the next run drops a cut-short last line anyway
            pass
        raise OutputPathError(
            f"Could not append a record to {path} ({exc.strerror or exc}): free some space on that disk (or choose "
            f"another --out folder) and run the same command again: the {written} records this process wrote before "
            "are kept and are not recomputed."
        ) from exc


def _lock_job(layout: Layout, ranks: Ranks) -> None:
    """Take the folder's lock on rank 0 for the whole job; every rank raises alike if it cannot.

    Raises:
        FolderLockedError: another sweep holds the folder (the message names it).
        OutputPathError: the lock file cannot be created.
    """
    verdict: Optional[tuple[str, str]] = None
    if ranks.main:
        try:
            holder = try_lock(layout.folder)
        except OutputPathError as exc:
            verdict = ("path", str(exc))
        else:
            verdict = None if holder is None else ("locked", locked_message(layout.folder, holder))
    if ranks.group is not None:
        import torch.distributed as dist

        box: list[Any] = [verdict]
        dist.broadcast_object_list(box, src=0, group=ranks.group)
        verdict = box[0]
    if verdict is not None:
        raise (FolderLockedError if verdict[0] == "locked" else OutputPathError)(verdict[1])


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

    Raises:
        FolderLockedError: another sweep is writing to the same folder.
        OutputPathError: a record or the merged file could not be written (a full disk);
            every record written before is kept.
    """
    _lock_job(layout, ranks)
    try:
        return _run_locked(items, job, layout, ranks, check, desc, unit)
    finally:
        if ranks.main:
            release(layout.folder)


def _run_locked(items: Sequence[Item], job: Job, layout: Layout, ranks: Ranks, check: Optional[RecordCheck],
                desc: str, unit: str) -> Outcome:
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
    # Unbuffered: each record is one write, on disk before the next is computed.
    with part.open("ab", buffering=0) as sink, \
            Progress(desc, total, unit, enabled=None if ranks.main else False) as bar:
        bar.set(already)
        for n, item in enumerate(mine, start=1):
            record = job(item)
            append_record(sink, record, part, n - 1)
            if n == die_after and ranks.rank == die_rank:
                os._exit(1)
            bar.set(already + counter.count())
        barrier(ranks, (lambda: bar.set(already + counter.count())) if ranks.main else None)
        bar.set(total)
    start = time.perf_counter()
    merged = merge_held(layout) if ranks.main else []
    merge_seconds = time.perf_counter() - start if ranks.main else 0.0
    barrier(ranks)  # the merged file is complete
    if not ranks.main:
        merged = [r for _, r in read_records(layout.merged, "run the same command again")]
    return Outcome(merged, len(todo), merge_seconds)
