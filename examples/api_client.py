"""A rate-limited API client: an RPM gate (requests per minute), a TPM gate (tokens per
minute) and a semaphore capping requests in flight.

    python -m examples.api_client                # trials at limits 2, 4, 8, 16, then advice

The API answers in 50 ms; the account allows 6,000 requests and 600,000 tokens a minute
(100 requests/s, ~1,000 tokens/s at ~100 tokens each... whichever binds first). Below the
gates, throughput grows with the semaphore's limit; at the gates it stops growing however many
requests are in flight. The advisor fits throughput against concurrency (the Universal
Scalability Law) over the trials and suggests the limit where the curve flattens, not "more".
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from examples._advice import advice_for, install, show

LATENCY_S = 0.05
RPM, TPM = 6_000, 600_000


class Gate:
    """A token bucket refilled continuously: ``per_minute`` units a minute, a 0.1 s burst."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60
        self.capacity = self.rate / 10  # a tenth of a second's worth
        self.level = self.capacity
        self.stamp = time.monotonic()

    async def take(self, units: float) -> None:
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.level >= units:
                self.level -= units
                return
            await asyncio.sleep((units - self.level) / self.rate)  # the gate's own wait


class ApiClient:
    def __init__(self, limit: int) -> None:
        self.rpm, self.tpm = Gate(RPM), Gate(TPM)
        self.in_flight = asyncio.Semaphore(limit)

    async def complete(self, prompt_tokens: int) -> int:
        async with self.in_flight:
            await self.rpm.take(1)
            await self.tpm.take(prompt_tokens)
            await asyncio.sleep(LATENCY_S)  # the API's answer time
            return prompt_tokens // 2


async def client_run(limit: int, requests: int = 150, callers: int = 32) -> float:
    """``callers`` tasks send ``requests`` requests through one client; requests/s."""
    client = ApiClient(limit)
    rng = random.Random(limit)
    per = requests // callers + 1

    async def caller() -> None:
        for _ in range(per):
            await client.complete(rng.randint(60, 140))

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return callers * per / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> dict[int, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limits", default="2,4,8,16")
    args = parser.parse_args(argv)
    install()
    rates = {}
    for limit in (int(x) for x in args.limits.split(",")):
        rates[limit] = asyncio.run(client_run(limit, requests=max(150, 30 * limit)))
        print(f"limit {limit:3d}: {rates[limit]:6.1f} requests/s")
    show("advice", advice_for("Semaphore created at"))
    return rates


if __name__ == "__main__":
    main()
