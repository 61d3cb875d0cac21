"""A checkpoint-runner-style worker pool: N worker tasks take jobs from an ``asyncio.Queue``;
each job loads a checkpoint (blocking read, in a thread), runs a step (awaits a remote
service) and saves the checkpoint (blocking write, in a thread).

    python -m examples.checkpoint_runner              # trials at 2 and 4 and 8 workers, advice

The pool size is the app's own concurrency limit, so each job is marked with
``asyncwatch.concurrency("checkpoint-runner", limit=N, backlog=queue)``: the advisor sees the
holds, the jobs waiting in the queue and the throughput at each pool size, fits the USL and
suggests the worker count. The remote step slows down a little as more jobs share it
(contention), so the curve bends.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncwatch
from examples._advice import advice_for, install, show

IO_S, STEP_S = 0.004, 0.02


def load(job: int) -> bytes:
    time.sleep(IO_S)  # read the checkpoint
    return job.to_bytes(8, "little")


def save(job: int, blob: bytes) -> None:
    time.sleep(IO_S)  # write it back


class RemoteStep:
    """A shared service whose step time grows with the jobs it serves at once."""

    def __init__(self) -> None:
        self.busy = 0

    async def run(self, blob: bytes) -> bytes:
        self.busy += 1
        try:
            await asyncio.sleep(STEP_S * (1 + 0.03 * (self.busy - 1)))
            return blob
        finally:
            self.busy -= 1


async def runner_run(workers: int, jobs: int = 200) -> float:
    """Run ``jobs`` jobs on ``workers`` workers; jobs per second."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for job in range(jobs):
        queue.put_nowait(job)
    remote = RemoteStep()

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            with asyncwatch.concurrency("checkpoint-runner", limit=workers, backlog=queue):
                blob = await asyncio.to_thread(load, job)
                blob = await remote.run(blob)
                await asyncio.to_thread(save, job, blob)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return jobs / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> dict[int, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="2,4,8")
    args = parser.parse_args(argv)
    install()
    rates = {}
    for n in (int(x) for x in args.workers.split(",")):
        rates[n] = asyncio.run(runner_run(n, jobs=max(120, 25 * n)))
        print(f"{n:3d} workers: {rates[n]:6.1f} jobs/s")
    show("advice", advice_for("concurrency 'checkpoint-runner'"))
    return rates


if __name__ == "__main__":
    main()
