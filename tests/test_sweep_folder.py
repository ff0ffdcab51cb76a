"""A sweep's output folder: one sweep per folder (an OS lock, released when its process dies,
shared by torchrun ranks), a merge that keeps what a part file gains meanwhile, and a full disk
that is one line and exit code 2 with every record kept."""

import errno
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest

import tl_jacobian_scopes as tjs
from tiny_models import TINY_TEXTS, read_records, tiny_model, write_prompts
from tl_jacobian_scopes.sweep import Layout, cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


# ---- the sweep: one per folder -----------------------------------------------------------------


def test_a_second_sweep_into_the_folder_is_refused_and_the_first_loses_nothing(tiny, tmp_path, monkeypatch, capsys):
    """Sweep B starts (and would merge) while sweep A is still appending: B is refused, A keeps all."""
    from tl_jacobian_scopes.sweep import jobs

    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS), tmp_path / "out"
    explain = jobs.explain_prompt
    second = []

    def explain_and_start_b(model, scope, prompt, options):
        if prompt.id == 2 and not second:  # A is half-way: B starts on the same folder
            second.append(None)
            second[0] = cli.main([str(data), "--scope", "semantic", "--out", str(out), "--limit", "2"], model=tiny)
        return explain(model, scope, prompt, options)

    monkeypatch.setattr(jobs, "explain_prompt", explain_and_start_b)
    assert cli.main([str(data), "--scope", "semantic", "--out", str(out)], model=tiny) == 0
    err = capsys.readouterr().err
    assert second == [2]
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "Another sweep is writing to" in line and f"pid {os.getpid()}" in line and "started 20" in line
    assert "another --out folder" in line
    assert [r["id"] for r in read_records(out / "set.jsonl")] == list(range(len(TINY_TEXTS)))
    assert not Layout(out, "set").parts()


def test_a_lock_held_by_another_process_is_named_and_released_when_it_dies(tiny, tmp_path, capsys):
    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS[:2]), tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from tl_jacobian_scopes.sweep.lock import try_lock; "
         "assert try_lock(Path(sys.argv[1])) is None; print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main([str(data), "--scope", "semantic", "--out", str(out)], model=tiny) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on host " in err and "started 20" in err and len(err.strip().splitlines()) == 1
        assert not (out / "set.jsonl").exists()
        with pytest.raises(tjs.FolderLockedError, match=f"pid {holder.pid}"):
            tjs.run_sweep(tiny, data, out, scope="semantic")
    finally:
        holder.kill()  # as kill -9: the OS releases the lock; its file stays, stale
        holder.wait()
    assert cli.main([str(data), "--scope", "semantic", "--out", str(out)], model=tiny) == 0
    assert len(read_records(out / "set.jsonl")) == 2


def test_merge_keeps_a_part_file_that_grows_while_it_is_read(tmp_path, monkeypatch):
    from tl_jacobian_scopes.sweep import records

    layout = Layout(tmp_path, "set")
    layout.part(0, 1).write_text(json.dumps({"id": 0, "key": "a"}) + "\n")
    load = records.load_done

    def load_then_append(*args, **kwargs):
        done = load(*args, **kwargs)
        with layout.part(0, 1).open("a") as fh:  # a writer outside the lock appends meanwhile
            fh.write(json.dumps({"id": 1, "key": "b"}) + "\n")
        return done

    monkeypatch.setattr(records, "load_done", load_then_append)
    assert [r["id"] for r in records.merge(layout)] == [0]
    monkeypatch.setattr(records, "load_done", load)
    assert [r["id"] for r in records.merge(layout)] == [0, 1]  # kept, merged next time
    assert not layout.parts()


# ---- the sweep: a full disk ---------------------------------------------------------------------


class _FullDisk:
    """A file whose ``fail_at``-th write writes a few bytes, then fails with ENOSPC."""

    def __init__(self, fh, fail_at, counter):
        self._fh, self._fail_at, self._counter = fh, fail_at, counter

    def write(self, data):
        self._counter[0] += 1
        if self._counter[0] >= self._fail_at:
            self._fh.write(data[:7])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._fh.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._fh.close()
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _fill_disk_on(monkeypatch, suffix, fail_at):
    opened = pathlib.Path.open
    counter = [0]

    def open_(self, mode="r", *args, **kwargs):
        fh = opened(self, mode, *args, **kwargs)
        return _FullDisk(fh, fail_at, counter) if self.name.endswith(suffix) and mode[0] in "aw" else fh

    monkeypatch.setattr(pathlib.Path, "open", open_)


@pytest.mark.parametrize("where, suffix, fail_at", [("append", "-of-1.jsonl", 4), ("merge", ".jsonl.merging", 2)])
def test_a_full_disk_is_one_line_exit_2_and_every_record_is_kept(tiny, tmp_path, monkeypatch, capsys,
                                                                   where, suffix, fail_at):
    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS), tmp_path / "out"
    args = [str(data), "--scope", "semantic", "--out"]
    assert cli.main([*args, str(tmp_path / "ref")], model=tiny) == 0
    reference = read_records(tmp_path / "ref" / "set.jsonl")
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _fill_disk_on(patch, suffix, fail_at)
        assert cli.main([*args, str(out)], model=tiny) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "No space left on device" in err
    assert "run the same command again" in err
    assert not list(out.glob("*.merging"))  # no partial merged copy left
    layout = Layout(out, "set")
    kept = [r for p in layout.files() for r in read_records(p)]  # every file ends with a whole line
    if where == "append":
        assert sorted(r["id"] for r in kept) == [0, 1, 2] and not layout.merged.exists()
    else:
        assert sorted(r["id"] for r in kept) == list(range(len(TINY_TEXTS))) and len(layout.parts()) == 1
    assert cli.main([*args, str(out)], model=tiny) == 0
    assert read_records(layout.merged) == reference and not layout.parts()


@pytest.mark.torchrun
def test_torchrun_ranks_share_the_lock_and_a_locked_folder_stops_every_rank(tmp_path):
    from tl_jacobian_scopes.sweep.lock import folder_lock

    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS[:4]), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "tests/sweep_worker.py", "llama", str(data), "--scope", "semantic", "--out", str(out)]
    out.mkdir()
    with folder_lock(out):  # this process's sweep holds the folder: both ranks stop, none hangs
        run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode != 0 and run.stderr.count(f"Another sweep is writing to {out}: pid {os.getpid()}") == 2
    assert not list(out.glob("set*.jsonl"))
    # A job that gets the lock shares it over its ranks: test_sweep.py's torchrun runs (rank 1 appends).


# ---- the memory guard counts every option that scales the probes -------------------------------


# ---- result files --------------------------------------------------------------------------------


# ---- ids are integers --------------------------------------------------------------------------


# ---- time series ---------------------------------------------------------------------------------


# ---- torch hooks on the bridge's wrapped modules ---------------------------------------------------


# ---- second red-team round ------------------------------------------------------------------------


