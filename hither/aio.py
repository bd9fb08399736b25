"""asyncio: ``await job`` and ``await hi.gather(*jobs)``.

A job of a worker handler is awaited through its future (the event loop is never
blocked). A job of the inline handler runs its function in the thread that waits for it,
so awaiting one runs the inline work on a thread of the loop's default executor: the event
loop goes on meanwhile. Cancelling the awaiting task cancels the job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any


async def await_job(job: Any) -> Any:
    """The result of ``job`` (a :class:`hither.Job`), awaited without blocking the loop."""
    if job.handler.drives_in_caller and not job.done():
        loop = asyncio.get_running_loop()
        waiter = loop.run_in_executor(None, _drive, job)
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            job.cancel()
            raise
        return job.result(0)
    return await asyncio.wrap_future(job)


def _drive(job: Any) -> None:
    try:
        job.exception()  # runs the inline work this job waits for, in this thread
    except concurrent.futures.CancelledError:
        pass


async def gather(*jobs: Any, return_exceptions: bool = False) -> list[Any]:
    """Await several jobs; their results in the order given (like :func:`asyncio.gather`).

    With ``return_exceptions=False`` the first error is raised (the other jobs go on)."""
    return list(await asyncio.gather(*(await_job(j) for j in jobs),
                                     return_exceptions=return_exceptions))
