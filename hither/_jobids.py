"""Job ids: 15 ASCII letters, as in hither 0.4.2, unique across processes."""

from __future__ import annotations

import itertools
import os
import string

# A random prefix per process and a counter: unique across processes, and much cheaper than
# drawing randomness per job (os.urandom is a system call, ~10 us on some VMs).
_PREFIX = os.urandom(7).translate(bytes((string.ascii_letters * 5).encode()[:256])).decode()
_HEX_TO_LETTERS = str.maketrans("0123456789abcdef", "ABCDEFGHIJKLMNOP")
next_job_number = itertools.count().__next__
"""A new job's number (see :func:`job_id_text`)."""


_LOW = tuple(format(i, "02x").translate(_HEX_TO_LETTERS) for i in range(256))
_head: tuple[int, str] = (-1, "")  # the last block of 256 ids: its number and first 13 letters


def job_id_text(number: int) -> str:
    """15 ASCII letters, as in hither 0.4.2: 7 random per process, then 8 from a counter
    (the first 6 of them made once per block of 256 ids)."""
    global _head
    n = number & 0xFFFFFFFF
    block, head = _head
    if n >> 8 != block:
        block = n >> 8
        head = _PREFIX + format(block, "06x").translate(_HEX_TO_LETTERS)
        _head = (block, head)
    return head + _LOW[n & 0xFF]
