"""An LLM client under RPM and TPM limits, its gates measured with ``asyncwatch.gate``.

    python -m examples.llm_client

The account allows 1,200 requests and 60,000 tokens a minute (20 requests/s, 1,000 tokens/s);
prompts are 40-160 tokens, so the token gate binds first (~10 requests/s). Each request waits
at the client's own token buckets (the shape of ``aiolimiter.AsyncLimiter`` or an SDK's
limiter) inside ``asyncwatch.gate("llm", rpm=..., tpm=..., tokens=n)``, then holds one of 16
permits of a semaphore while the model answers (200 ms). The metrics tell where requests
wait: at the gate (``asyncwatch.gate.wait.time``, ``asyncwatch.gate.waiting``) against the
tokens and requests through it and the declared limits (``asyncwatch.gate.passes``,
``asyncwatch.gate.limit``), and at the semaphore (``asyncwatch.semaphore.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import asyncwatch
from examples._advice import install

RPM, TPM = 1_200, 60_000
ANSWER_S = 0.2


class TokenBucket:
    """``per_minute`` units a minute, refilled continuously, a one-second burst."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60
        self.capacity = self.rate
        self.level = self.capacity
        self.stamp = time.monotonic()

    async def acquire(self, units: float = 1) -> None:
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.level >= units:
                self.level -= units
                return
            await asyncio.sleep((units - self.level) / self.rate)  # the bucket's own wait


class LlmClient:
    def __init__(self) -> None:
        self.rpm, self.tpm = TokenBucket(RPM), TokenBucket(TPM)
        self.in_flight = asyncio.Semaphore(16)

    async def complete(self, prompt_tokens: int) -> int:
        async with asyncwatch.gate("llm", rpm=RPM, tpm=TPM, tokens=prompt_tokens):
            await self.rpm.acquire()
            await self.tpm.acquire(prompt_tokens)
        async with self.in_flight:
            await asyncio.sleep(ANSWER_S)  # the model's answer
            return prompt_tokens // 2


async def run(requests: int, callers: int) -> float:
    client = LlmClient()
    rng = random.Random(16)

    async def caller() -> None:
        for _ in range(requests // callers):
            await client.complete(rng.randint(40, 160))

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(callers):
            group.create_task(caller())
    return requests / (time.perf_counter() - began)


def gate_figures(watch: asyncwatch.Watch) -> dict[str, Any]:
    """The gate's metric points, as an exporter would read them."""
    out: dict[str, Any] = {}
    for mdef, attrs, value, _ in watch.advisor.points():
        if attrs.get("asyncwatch.resource") == "llm":
            unit = attrs.get("asyncwatch.gate.unit")
            out[mdef.name + (f"[{unit}]" if unit else "")] = value
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--callers", type=int, default=12)
    args = parser.parse_args(argv)
    watch = install()
    began = time.perf_counter()
    rate = asyncio.run(run(args.requests, args.callers))
    seconds = time.perf_counter() - began
    figures = gate_figures(watch)
    figures["requests/s"] = rate
    figures["seconds"] = seconds
    tokens = figures.get("asyncwatch.gate.passes[tokens]", 0)
    print(f"{args.requests} requests in {seconds:.1f} s ({rate:.1f}/s)")
    print(f"tokens through the gate: {tokens:,} ({60 * tokens / seconds:,.0f}/min against "
          f"a TPM limit of {TPM:,})")
    waited = figures.get("asyncwatch.gate.wait.time", 0.0)
    print(f"time waiting at the gate: {waited:.1f} s in all, {waited / seconds:.1f} callers "
          f"on average")
    for name, value in sorted(figures.items()):
        print(f"  {name} = {value:,.2f}" if isinstance(value, float) else f"  {name} = {value}")
    return figures


if __name__ == "__main__":
    main()
