"""Run by test_runtime_jobs.py as a script: a job of ``__main__`` raising an exception class
of ``__main__``, in a runtime. argv: runtime (docker|venv), handler (inline|parallel).
Prints what came back."""

import sys

import hither as hi


class ScriptError(Exception):
    """Defined in the script: inside the runtime it is ``script_custom_error.ScriptError``."""


@hi.function("s_raise_script_error", "1")
def s_raise_script_error(message):
    raise ScriptError(message, 7)


def main() -> None:
    from hither.testing.cases import runtime_settings  # the caller only: not in the runtime

    runtime, kind = sys.argv[1], sys.argv[2]
    handler = hi.ParallelJobHandler(1) if kind == "parallel" else hi.DefaultJobHandler()
    with handler, hi.Config(job_handler=handler, **runtime_settings(runtime)):
        err = s_raise_script_error.run(message="from the script").exception(timeout=120)
    print(type(err).__module__, type(err).__qualname__, repr(err.args),
          isinstance(err, ScriptError))


if __name__ == "__main__":
    main()
