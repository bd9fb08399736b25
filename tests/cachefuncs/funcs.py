"""Hither functions used as cached jobs by ``tests/test_cache*.py``.

They sit at module level in an importable module so that worker processes (spawn) can
import them by name. Each logs its executions with :func:`tests.cachefuncs.log_call`.
"""

from __future__ import annotations

import builtins
import fractions
import os
import sys
import time

import numpy as np

import hither as hi
from tests.cachefuncs import CALL_LOG_ENV, log_call, read_calls


class CfError(Exception):
    """An exception type that is not a built-in."""


@hi.function("cf_add", "1")
def cf_add(a, b=0):
    log_call("cf_add")
    return a + b


@hi.function("cf_echo", "1")
def cf_echo(x):
    log_call("cf_echo")
    return x


@hi.function("cf_nested", "1")
def cf_nested(depth):
    """A list nested ``depth`` deep around 1."""
    log_call("cf_nested")
    value = 1
    for _ in range(depth):
        value = [value]
    return value


@hi.function("cf_text", "1")
def cf_text(unit, n, kind="str"):
    """``unit * n`` as a str, or its UTF-8 (surrogates kept) as bytes."""
    log_call("cf_text")
    text = unit * n
    return text if kind == "str" else text.encode("utf-8", "surrogatepass")


@hi.function("cf_square", "1")
def cf_square(x):
    log_call("cf_square")
    return x * x


@hi.function("cf_calls_so_far", "1")
def cf_calls_so_far(tag):
    """Returns how many times it has run (by the call log): a result that differs per run."""
    log_call("cf_calls_so_far")
    return [tag, read_calls(os.environ[CALL_LOG_ENV])["cf_calls_so_far"]]


@hi.function("cf_fail", "1")
def cf_fail(kind, message):
    log_call("cf_fail")
    if kind == "custom":
        raise CfError(message)
    if kind == "local":
        class LocalError(Exception):
            """No caller can import it."""

        raise LocalError(message)
    raise getattr(builtins, kind)(message)


@hi.function("cf_flaky", "1")
def cf_flaky(x):
    """Fails while the file ``<call log>.fail`` exists (not part of the key; unlike an
    environment variable, seen by workers that are already running)."""
    log_call("cf_flaky")
    if os.path.exists(os.environ[CALL_LOG_ENV] + ".fail"):
        raise ValueError(f"flaky failure for {x}")
    return x * 10


@hi.function("cf_values", "1")
def cf_values(kind):
    """A value of each kind the cache must give back exactly."""
    log_call("cf_values")
    return make_value(kind)


@hi.function("cf_array", "1")
def cf_array(n, dtype="float64"):
    log_call("cf_array")
    return (np.arange(n, dtype=dtype) * 0.5).astype(dtype)


@hi.function("cf_bytes", "1")
def cf_bytes(n, seed=0):
    log_call("cf_bytes")
    unit = bytes((seed + i) % 251 for i in range(251))
    return (unit * (n // 251 + 1))[:n]


@hi.function("cf_console", "1")
def cf_console(n):
    log_call("cf_console")
    for i in range(n):
        print(f"out line {i}")
    print("err line", file=sys.stderr)
    return n


@hi.function("cf_sleep", "1")
def cf_sleep(seconds, value=None):
    log_call("cf_sleep")
    time.sleep(seconds)
    return value


@hi.function("cf_crash", "1")
def cf_crash(code):
    log_call("cf_crash")
    os._exit(code)


@hi.function("cf_write_file", "1")
def cf_write_file(outdir, text):
    """Writes a file and returns it as a ``hi.File`` (stored by content)."""
    log_call("cf_write_file")
    path = os.path.join(outdir, "out.txt")
    with open(path, "w") as f:
        f.write(text)
    return hi.File(path)


@hi.function("cf_read_file", "1")
def cf_read_file(f):
    log_call("cf_read_file")
    with open(f, "rb") as fh:
        return fh.read()


def make_value(kind):
    """The values of :func:`cf_values`."""
    if kind == "tuple":
        return (1, "a", (2.5, None), [3, (4,)], ())
    if kind == "int_keys":
        return {3: "c", 1: "a", -2: ["x"], 2**70: "big"}
    if kind == "mixed_keys":
        return {(1, 2): "tuple key", 1.5: "float", True: "bool", None: 0, b"k": "bytes"}
    if kind == "unsorted_str_keys":
        return {"b": 1, "a": 2, "~": 3}
    if kind == "bytes":
        return [b"", b"\x00\xff" * 3, bytes(range(256)) * 40]
    if kind == "numpy_scalars":
        return [np.bool_(True), np.int64(-5), np.float32(1.5), np.uint8(255),
                np.complex64(1 - 2j), np.float64("nan"), np.datetime64("2024-01-02")]
    if kind == "float32_arrays":
        small = np.linspace(0, 1, 7, dtype=np.float32)
        big = np.arange(10_000, dtype=np.float32).reshape(100, 100) / 3
        return {"small": small, "big": big, "empty": np.zeros((0, 3), np.float32)}
    if kind == "odd_arrays":
        return [np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian
                np.asfortranarray(np.arange(5000.0).reshape(50, 100)),
                np.array(3.5),  # 0-d
                np.array([(1, 2.0), (3, 4.0)], dtype=[("i", "<i2"), ("f", "<f8")]),
                np.array([True, False]),
                np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]")]
    if kind == "floats":
        return [0.1, -0.0, float("inf"), float("-inf"), float("nan"), 1e308, 5e-324,
                complex(1, -0.0)]
    if kind == "ints":
        return [0, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**40, True, False]
    if kind == "sets":
        return [set(), {1, 2, 3}, frozenset({"a", (1, 2)}), {frozenset({1})}]
    if kind == "nested":
        return {"a": [1, (2, {3: np.int64(4), "arr": np.ones(3, np.int16)})],
                "b": {"c": (b"x" * 5000, {"d": [None, np.bool_(False)]})},
                "e": [[[]], {}, ("",)]}
    if kind == "fraction":  # not a type the cache can store
        return fractions.Fraction(1, 3)
    if kind == "strings":
        return ["", "é\u2603\U0001f600", "a\x00b", "~", {"~": "tag-like", "v": 1}]
    raise KeyError(kind)


VALUE_KINDS = ["tuple", "int_keys", "mixed_keys", "unsorted_str_keys", "bytes",
               "numpy_scalars", "float32_arrays", "odd_arrays", "floats", "ints", "sets",
               "nested", "strings"]
