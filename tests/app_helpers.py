"""Helpers shared by the app's tests (not a test module): a page handler by name, a stand-in
for Gradio's request (a session), a counting stand-in for the model's lock, and a quiet
stand-in for ``gr.Progress``."""

import threading

PROMPT = "The capital of France is"
QUIET = lambda *a, **k: None  # noqa: E731  (gr.Progress stand-in)


def handler(blocks, name):
    """The page's handler called ``name`` (one function, though some are wired to several events)."""
    fns = {id(f.fn): f.fn for f in blocks.fns.values() if getattr(f.fn, "__name__", "") == name}
    (fn,) = fns.values()
    return fn


class Session:
    """Gradio's request as a handler sees it: only the session hash is used."""

    def __init__(self, session_hash):
        self.session_hash = session_hash


class CountingLock:
    """A stand-in for the model's lock that counts acquisitions."""

    def __init__(self):
        self.lock, self.count = threading.RLock(), 0

    def acquire(self, *args, **kwargs):
        self.count += 1
        return self.lock.acquire(*args, **kwargs)

    def release(self):
        self.lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
