"""The contract suite of hither's job handlers, for this repository and for handler authors.

Every handler (inline, parallel, and any other: Slurm, Dask, yours) keeps the same
contract in every runtime (the host interpreter, Docker, Podman, Apptainer, a uv
environment): results come back exactly, exceptions keep their type, console output is
captured with its stderr flag, cancel, timeout and crashes end the job with the same
errors, jobs are ``concurrent.futures`` futures. The tests live in
:mod:`hither.testing.contract` (continued in ``contract_control``, helpers in ``checks``);
the jobs they run in :mod:`hither.testing.jobs`.

To run the contract over a handler, define a fixture ``hc`` that yields a
:class:`~hither.testing.cases.Case` and import the tests into a test module::

    # tests/test_my_handler_contract.py
    import pytest

    from hither.testing.cases import Case
    from hither.testing.contract import *  # noqa: F403 - the contract's tests and fixture

    @pytest.fixture(scope="module", params=["host", "docker"])
    def hc(request):
        with Case(lambda: MyJobHandler(workers=2), request.param, slots=2) as case:
            yield case

``Case(make_handler, runtime, slots=...)`` takes a function that makes the handler (called
again for the tests that need a handler without warm workers), the runtime (``"host"``,
``"docker"``, ``"podman"``, ``"apptainer"`` or ``"venv"``; see
:func:`~hither.testing.cases.runtime_settings` for the images and environment used, set
by ``HITHER_TEST_IMAGE`` and ``HITHER_TEST_SANDBOX``) and how many jobs the handler runs
at once. A module-scoped fixture keeps one handler for all the tests of a case, so warm
workers are reused; after each test the jobs it left are cancelled, and leaving the case
shuts the handler down and fails if a worker container or process is left.
:func:`~hither.testing.cases.standard_case` makes the cases this repository runs
(:data:`~hither.testing.cases.STANDARD_CASES`). The tests that kill workers (cancel
while running, ``job_timeout``, crashes) come last and get a handler of their own each
(``Case.fresh()``): the case's handler is shut down first, so what each leaves behind is
told apart exactly.

The suite needs pytest, pytest-timeout and numpy (``pip install hither[test]``). Missing
components (a container engine, apptainer, uv) skip their cases on a developer machine
and fail them under ``CI=true`` (:mod:`hither.testing.components`).
"""
