"""Records files of a sweep: keys, part files, resume checks and the merge.

A sweep over ``<stem>`` writes into its output folder:

- ``<stem>.part-<rank>-of-<world>.jsonl``: the records one rank computed, one JSON object
  per line, flushed after each record (a killed rank leaves at most a cut-short last line,
  which readers drop);
- ``<stem>.jsonl``: every record, sorted by id and deduplicated by key, written atomically
  by the merge, which then removes the part files.

A resume reads the merged file and every part file (of any world size), so a restart with
another number of processes finds every record already done.

Examples:
    >>> layout = Layout(Path("results"), "lambada")
    >>> layout.part(1, 2).name
    'lambada.part-1-of-2.jsonl'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from ..errors import DataFileError, OutputPathError, StaleRecordsError
from ..jsonl import jsonl_objects

#: ``(record, path, line number)`` -> None, or raise: a check of one record read back.
RecordCheck = Callable[[dict[str, Any], Path, int], None]


def record_key(payload: Mapping[str, Any]) -> str:
    """A short hash of ``payload`` (canonical JSON): what a record was computed from.

    Examples:
        >>> record_key({"b": 1, "a": 2}) == record_key({"a": 2, "b": 1})
        True
    """
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def model_params(model: Any) -> dict[str, Any]:
    """The model's part of a run's settings: its name, backend class and dtype."""
    from ..models.access import ModelAccess

    dtype = next((str(p.dtype) for p in model.parameters()), "") if hasattr(model, "parameters") else ""
    return {"model": ModelAccess(model).model_name or type(model).__name__,
            "backend": type(model).__name__, "dtype": dtype}


@dataclass(frozen=True)
class Layout:
    """Where the records of one sweep live: ``folder/<stem>.jsonl`` and its part files."""

    folder: Path
    stem: str

    @property
    def merged(self) -> Path:
        return self.folder / f"{self.stem}.jsonl"

    def part(self, rank: int, world: int) -> Path:
        return self.folder / f"{self.stem}.part-{rank}-of-{world}.jsonl"

    def parts(self, world: Optional[int] = None) -> list[Path]:
        """The part files there now (of one world size, or of any), sorted by name."""
        pattern = re.compile(re.escape(self.stem) + r"\.part-\d+-of-" + (str(world) if world else r"\d+") + r"\.jsonl")
        return sorted(p for p in self.folder.glob(f"{glob_escape(self.stem)}.part-*-of-*.jsonl")
                      if pattern.fullmatch(p.name))

    def files(self) -> list[Path]:
        """The merged file (when there) and every part file."""
        return [p for p in [self.merged, *self.parts()] if p.exists()]


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters quoted."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def whole_lines(path: Path, fix: str) -> str:
    """The text of ``path`` up to its last line break: a line cut short by a kill is dropped.

    Raises:
        DataFileError: the file cannot be read as UTF-8 text (the message ends with ``fix``).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"{path} cannot be read ({exc}): {fix}.") from exc
    raw = raw[: raw.rfind(b"\n") + 1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} cannot be read as UTF-8 text ({exc}): {fix}.") from exc


def read_records(path: Path, fix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every whole line of a records file.

    Raises:
        DataFileError: ``path:line: ...`` for a line that is not a JSON object (the message
            ends with ``fix``).
    """
    for lineno, record in jsonl_objects(path, whole_lines(path, fix), fix):
        if not isinstance(record, dict):
            raise DataFileError(f"{path}:{lineno}: not a record ({json.dumps(record)[:60]}): {fix}.")
        yield lineno, record


def drop_torn_tail(path: Path) -> None:
    """Cut a cut-short last line off ``path`` (before appending to it)."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        raw = fh.read()
        if raw and not raw.endswith(b"\n"):
            fh.truncate(raw.rfind(b"\n") + 1)


def default_fix(layout: Layout) -> str:
    return (f"use another --out folder, or delete {layout.merged} and its part files "
            f"{layout.stem}.part-*.jsonl to start over")


def load_done(layout: Layout, check: Optional[RecordCheck] = None) -> dict[str, dict[str, Any]]:
    """Every record already written (merged file first, then the part files), by key.

    Raises:
        DataFileError: a malformed line; whatever ``check`` raises for a record that does
            not belong to this run (see :class:`StrictCheck`).
    """
    done: dict[str, dict[str, Any]] = {}
    for path in layout.files():
        for lineno, record in read_records(path, default_fix(layout)):
            if check is not None:
                check(record, path, lineno)
            if not isinstance(record.get("key"), str):
                raise DataFileError(f"{path}:{lineno}: a record without a key: {default_fix(layout)}.")
            done.setdefault(record["key"], record)
    return done


def _order(record: dict[str, Any]) -> tuple[int, int, str]:
    idx = record.get("id")
    return (0, idx, "") if isinstance(idx, int) else (1, 0, str(record["key"]))


def merge(layout: Layout) -> list[dict[str, Any]]:
    """Merge the merged file and every part file into ``<stem>.jsonl``, then remove the parts.

    Records are sorted by id and deduplicated by key (the first copy is kept). The file is
    replaced atomically, so a crash during the merge loses nothing: the parts stay until
    the merged file is in place, and a later merge deduplicates them. The merge takes the
    folder's lock (:mod:`.lock`), so it never runs beside a sweep of another process; and a
    part file that grew while it was read (someone still appends to it) is kept, not removed.

    Returns:
        The merged records.

    Raises:
        FolderLockedError: another process's sweep is writing to the folder.
        OutputPathError: the merged file could not be written (a full disk): the partial
            copy is removed, and every record stays in the part files and the old merged file.
    """
    from .lock import folder_lock

    with folder_lock(layout.folder):
        return merge_held(layout)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def merge_held(layout: Layout) -> list[dict[str, Any]]:
    """:func:`merge`, for a caller that already holds the folder's lock (a sweep)."""
    parts = {part: _size(part) for part in layout.parts()}  # sizes before reading: all of that is merged
    records = sorted(load_done(layout).values(), key=_order)
    staging = layout.merged.with_name(layout.merged.name + ".merging")
    try:
        with staging.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
            fh.flush()
            os.fsync(fh.fileno())
        staging.replace(layout.merged)
    except OSError as exc:
        try:
            staging.unlink(missing_ok=True)
        except OSError:
            pass
        kept = ", ".join(p.name for p in parts) or "none"
        raise OutputPathError(
            f"Could not write the merged records {layout.merged} ({exc.strerror or exc}): every record is kept "
            f"(in the part files: {kept}; and in {layout.merged.name} if there): free some space on that disk and "
            "run the same command again to merge them (nothing is recomputed)."
        ) from exc
    for part, size in parts.items():
        if _size(part) == size:  # a part that grew since is kept; the next merge deduplicates it
            part.unlink(missing_ok=True)
    return records


@dataclass
class StrictCheck:
    """Refuse any record that is not item ``id`` of this data file with these settings.

    Args:
        params: The run's settings, stored with every record.
        keys: The expected key of item ``i`` (all items of the data file, not only those
            to run: an extended data file resumes).
        data: The data file, for messages.
        settings_hint: Extra advice for changed settings, e.g. ``" (or pass --methods a,b
            to resume it)"``, from the old settings and the names of those that differ.
        unkeyed_hint: Extra advice for a record without id or key.
    """

    params: dict[str, Any]
    keys: Sequence[str]
    data: Path
    settings_hint: Callable[[dict[str, Any], list[str]], str] = lambda old, differ: ""
    unkeyed_hint: str = ""

    def __call__(self, record: dict[str, Any], path: Path, lineno: int) -> None:
        fix = f"use another --out folder, or delete {path} to start over"
        idx = record.get("id")
        if not isinstance(idx, int) or "key" not in record:
            raise StaleRecordsError(
                f"{path}:{lineno}: a record without an id or key (written before records were keyed, or not a "
                f"records file): its text and settings cannot be checked; {fix}{self.unkeyed_hint}."
            )
        if record.get("params") != self.params:
            old = record.get("params") or {}
            differ = [k for k in self.params if old.get(k) != self.params[k]]
            raise StaleRecordsError(
                f"{path}:{lineno}: record {idx} was computed with other settings "
                + ", ".join(f"{k}={old.get(k)!r} (now {self.params[k]!r})" for k in differ)
                + f": {fix}{self.settings_hint(old, differ)}."
            )
        if idx < 0 or idx >= len(self.keys) or record["key"] != self.keys[idx]:
            raise StaleRecordsError(
                f"{path}:{lineno}: record {idx} was computed from a text that is not text {idx} of {self.data} "
                f"(the data file changed, or another file has the same name): {fix}."
            )


def refuse_smaller_summary(summary_path: Path, old_count: Callable[[Any], int], new_count: int, fix: str) -> None:
    """Refuse to replace a summary made from more records than the coming one.

    A quick run (``--n 2``, ``--seeds 1``) pointed at a folder holding a long run's results
    would otherwise overwrite its summary with a few records' numbers.

    Args:
        summary_path: The summary file the run would write.
        old_count: Reads the number of records from the existing summary's parsed JSON.
        new_count: How many records the new summary would be made from.
        fix: What to pass instead, e.g. ``"--n 300"``.

    Raises:
        OutputPathError: the existing summary covers more records than ``new_count``.
    """
    if not summary_path.is_file():
        return
    try:
        old = int(old_count(json.loads(summary_path.read_text(encoding="utf-8"))))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return  # unreadable: not a summary this guard can compare; the run replaces it
    if old > new_count:
        raise OutputPathError(
            f"{summary_path} summarizes {old} records; this run would replace it with a summary of "
            f"{new_count}. Pass another --out folder (a fresh one for a quick run), or {fix} to extend "
            "or resume that run."
        )
