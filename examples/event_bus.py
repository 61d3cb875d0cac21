"""An event bus on ``asyncio.Queue``: publishers put messages (each a bunch of 1 to 3 x batch
events), one consumer writes each message's events to a sink in chunks of at most the batch
size, with a per-write overhead.

    python -m examples.event_bus                 # batches of up to 8, then the advisor's size
    python -m examples.event_bus --batch 200

Each write costs a round trip (20 ms) plus 0.1 ms per event, under a latency budget of 100 ms
per write. The consumer records each write with ``asyncwatch.batch``; sizes vary naturally
(a message's last chunk is smaller), which is what the cost fit needs. The example applies the
advice until it settles and prints the events per second at each step.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import asyncwatch
from examples._advice import advice_for, install, show

OVERHEAD_S, PER_EVENT_S, BUDGET_S = 0.02, 0.0001, 0.1


async def sink_write(events: list[int]) -> None:
    await asyncio.sleep(OVERHEAD_S + PER_EVENT_S * len(events))  # one round trip


async def bus_run(batch: int, events: int = 3000, publishers: int = 4) -> float:
    """Publish about ``events`` events; the consumer writes them all; events per second."""
    queue: asyncio.Queue[list[int] | None] = asyncio.Queue(maxsize=16)
    rng = random.Random(3)
    written = 0

    async def publish(me: int) -> None:
        sent = 0
        while sent < events // publishers:
            size = rng.randint(1, 3 * batch)
            await queue.put(list(range(sent, sent + size)))
            sent += size
        await queue.put(None)

    async def consume() -> None:
        nonlocal written
        finished = 0
        while finished < publishers:
            message = await queue.get()
            if message is None:
                finished += 1
                continue
            for start in range(0, len(message), batch):
                chunk = message[start:start + batch]
                with asyncwatch.batch("event-bus sink", size=len(chunk), budget_s=BUDGET_S):
                    await sink_write(chunk)
                written += len(chunk)

    began = time.perf_counter()
    await asyncio.gather(consume(), *(publish(p) for p in range(publishers)))
    return written / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> list[tuple[int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    install()
    steps = []
    batch = args.batch
    for _ in range(args.steps):
        rate = asyncio.run(bus_run(batch, events=max(2000, 20 * batch)))
        steps.append((batch, rate))
        recs = advice_for("batch 'event-bus sink'")
        show(f"batch {batch}: {rate:.0f} events/s", recs)
        if not recs or recs[0].suggested is None:
            break
        batch = recs[0].suggested
    return steps


if __name__ == "__main__":
    main()
