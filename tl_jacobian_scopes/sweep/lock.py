"""One sweep per output folder: an exclusive OS file lock on ``<out>/.tl-jacobian-scopes.lock``.

Two sweeps appending to and merging the same part files lose records (one merges and
deletes a part file that the other still appends to), so a sweep holds an exclusive
``flock`` on a lock file in its folder from before it reads the records until its merge is
done. The operating system releases the lock when the holder's process ends, however it
ends (``kill -9`` included), so a stale lock file never blocks a later sweep. The file
names its holder (pid, host, start time, command) for the message a second sweep gets.

Under torchrun rank 0 takes the lock for the whole job and tells the other ranks whether it
got it, so the ranks of one job share it and every rank of a refused job stops alike. The
lock is not re-entrant: a second sweep started inside the same process (a thread, a job that
runs a sweep) is refused too.

Example:
    >>> with folder_lock(Path("results")):  # not run: it would lock a folder in the caller's directory  # doctest: +SKIP
    ...     ...  # append and merge records in results/
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import FolderLockedError, OutputPathError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the folder is not locked
    fcntl = None  # type: ignore[assignment]

#: The lock file's name inside an output folder.
LOCK_NAME = ".tl-jacobian-scopes.lock"

#: Folders this process holds the lock of: real path -> file descriptor.
_HELD: dict[Path, int] = {}


def lock_path(folder: Path) -> Path:
    """The lock file of ``folder``."""
    return Path(folder) / LOCK_NAME


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(sys.argv)[:300]}


def _describe(path: Path) -> str:
    """Who holds the lock of ``path``, as written in it (best effort: it may be mid-write)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not written its name yet)"
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')} "
            f"({str(info.get('command', ''))[:120]!r})")


def try_lock(folder: Path) -> Optional[str]:
    """Take ``folder``'s lock for this process, or say who holds it.

    Returns:
        None once this process holds the lock (call :func:`release` after), or a
        description of the process that holds it.

    Raises:
        OutputPathError: the lock file cannot be created.
    """
    key = Path(folder).resolve()
    if key in _HELD:  # held by this process: another sweep of it is refused like any other
        return _describe(lock_path(key))
    if fcntl is None:  # pragma: no cover
        _HELD[key] = -1
        return None
    path = lock_path(key)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputPathError(f"The lock file {path} cannot be created ({exc.strerror}): choose another --out "
                              "folder.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return _describe(path)
    except OSError as exc:  # a filesystem without flock
        os.close(fd)
        raise OutputPathError(f"The lock file {path} cannot be locked ({exc.strerror}): choose an --out folder on "
                              "a local or lock-capable filesystem.") from exc
    try:  # who holds it, for the message another sweep gets; the lock itself is what counts
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode("utf-8"), 0)
    except OSError:  # a full disk: the lock is held all the same
        pass
    _HELD[key] = fd
    return None


def release(folder: Path) -> None:
    """Let go of ``folder``'s lock (after :func:`try_lock` returned None)."""
    fd = _HELD.pop(Path(folder).resolve(), None)
    if fd is not None and fd >= 0:
        # The file stays: removing it would let a process that opened it before the removal lock
        # a file that nobody else sees. Closing the descriptor releases the lock.
        os.close(fd)


def locked_message(folder: Path, holder: str) -> str:
    return (f"Another sweep is writing to {folder}: {holder}. Two sweeps in one folder lose records: wait for it "
            "to finish (then run this command again to resume), or choose another --out folder.")


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (this process only).

    Raises:
        FolderLockedError: another process holds it (the message names it).
    """
    holder = try_lock(folder)
    if holder is not None:
        raise FolderLockedError(locked_message(folder, holder))
    try:
        yield
    finally:
        release(folder)


def check_unlocked(folder: Path) -> None:
    """Refuse now (e.g. before loading a model) when another process holds ``folder``'s lock.

    Raises:
        FolderLockedError: another process holds it (the message names it).
    """
    with folder_lock(folder):
        pass
