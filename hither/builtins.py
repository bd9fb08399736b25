"""The built-in hither functions of 0.4.2: ``hi.identity`` and ``hi.noop``.

They run on the host (0.4.2 named an image for them that no one can pull any more). A
user function registered under the same name replaces them without complaint.
"""

from __future__ import annotations

from typing import Any

from .function import function


@function("identity", "0.1.0")
def identity(x: Any) -> Any:
    """Return ``x`` (handy to bring a value into a pipeline as a job)."""
    return x


@function("noop", "0.1.0")
def noop(**kwargs: Any) -> None:
    """Do nothing and return None (its arguments are ignored)."""
    return None
