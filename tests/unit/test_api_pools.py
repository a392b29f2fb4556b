"""The API's blocking work is split by kind: CPU-heavy work fills only its own bounded pool, so
database and file calls still run while every CPU thread is busy."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from processor.api.common import CPU_THREADS, cpu, io

_REQUEST = contextvars.ContextVar("request", default="none")


async def test_database_calls_run_while_every_cpu_thread_is_busy() -> None:
    release = threading.Event()
    running = threading.Semaphore(0)

    def render() -> str:
        running.release()
        release.wait()
        return threading.current_thread().name

    renders = [asyncio.create_task(cpu(render)) for _ in range(CPU_THREADS + 2)]
    for _ in range(CPU_THREADS):  # every CPU thread now holds a render
        assert await io(running.acquire, True, 30)
    # A deadlock guard, not a timing: with one pool for both, this call would wait for a render.
    name = await asyncio.wait_for(io(lambda: threading.current_thread().name), 30)
    assert name.startswith("api-io")
    assert not any(task.done() for task in renders)
    release.set()
    names = await asyncio.gather(*renders)
    assert all(n.startswith("api-cpu") for n in names)
    assert len(set(names)) <= CPU_THREADS


async def test_the_callers_context_goes_along() -> None:
    _REQUEST.set("r-1")
    assert await io(_REQUEST.get) == "r-1"
    assert await cpu(_REQUEST.get) == "r-1"
