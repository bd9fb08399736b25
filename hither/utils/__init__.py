"""Utilities used by hither's runtimes and handlers, also usable on their own.

* :class:`ConsoleCapture`: record (and echo) the lines a block writes to ``sys.stdout`` /
  ``sys.stderr``.
* :class:`TemporaryDirectory`: a temporary folder removed robustly on exit.
* :class:`ShellScript`: run a shell script text in its own process group; prompt ``stop()``.
* :class:`FileLock`: exclusive or shared ``flock`` lock with a timeout.
"""

from .console import ConsoleCapture
from .filelock import FileLock
from .shellscript import ShellScript
from .tempdir import TemporaryDirectory

__all__ = ["ConsoleCapture", "FileLock", "ShellScript", "TemporaryDirectory"]
