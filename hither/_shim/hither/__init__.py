"""A stand-in for ``hither`` inside a job's runtime (container or foreign environment).

A job's module is imported where the job runs, and it usually starts with
``import hither as hi`` and ``@hi.function(...)``. The real package is not installed
there, so this standard-library module (Python >= 3.8) takes its place: the decorators
return the function unchanged, ``hi.File`` is the real value type, and anything that would
start jobs is refused with a clear message.
"""

import _codec

File = _codec.File
__version__ = "runtime-shim"


def _identity_decorator(*_args, **_kwargs):
    def wrap(f):
        return f

    return wrap


function = _identity_decorator
container = _identity_decorator
local_modules = _identity_decorator
additional_files = _identity_decorator
opts = _identity_decorator


class PythonEnv(object):
    """Placeholder: environments are chosen by the caller, not inside a job."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class Config(object):
    """No-op inside a job: jobs cannot start jobs from within a runtime."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*_args, **_kwargs):
        raise RuntimeError(
            "hither.%s is not available inside a job's runtime (container or environment): "
            "start jobs from the host program instead. The module of a function that runs "
            "in a runtime is imported there, so its top-level code runs there too: put the "
            "code that starts jobs under 'if __name__ == \"__main__\":'" % name)

    return unavailable
