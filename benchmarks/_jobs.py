"""Job functions shared by the benchmarks.

They live in an importable module (not in ``__main__``) so every tool can ship them to
its worker processes by reference: hither, ProcessPoolExecutor, joblib/loky, dask and ray.
``@hi.function`` returns the function unchanged (plus a ``.run`` attribute), so the same
object is given to every tool.
"""

from __future__ import annotations

import time

import hither as hi


@hi.function("inc", "0.1.0")
def inc(x):
    """The tiny job: ``x + 1``."""
    return x + 1


@hi.function("add", "0.1.0")
def add(a, b):
    """A DAG node: the sum of its two parents."""
    return a + b


@hi.function("sleep_for", "0.1.0")
def sleep_for(seconds):
    """Sleep, then return the seconds slept (a job whose cost is pure waiting)."""
    time.sleep(seconds)
    return seconds


@hi.function("array_mean", "0.1.0")
def array_mean(a):
    """Mean of a numpy array: a cheap job with a big argument."""
    return float(a.mean())


def noop():
    """Used to warm up pools."""
    return None


@hi.function("make_text", "0.1.0")
def make_text(mb, kind):
    """``mb`` megabytes of text, as a ``str`` or as ``bytes``: a job with a big result."""
    unit = "hither caches big values as blobs. "
    text = (unit * (mb * 1_000_000 // len(unit) + 1))[: mb * 1_000_000]
    return text if kind == "str" else text.encode()


@hi.function("file_size", "0.1.0")
def file_size(f, after=None):
    """Size of a File input (its content is hashed into the job's key)."""
    import os

    return os.path.getsize(os.fspath(f))


@hi.function("remote_blob", "0.1.0")
def remote_blob(seed):
    """A result stored as a blob (6400 bytes, over the 4 KiB inline limit)."""
    import hashlib

    return hashlib.sha256(str(seed).encode()).digest() * 200
