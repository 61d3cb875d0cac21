"""A period calculation: totals per account for a period, fanned out with ``gather``, each
account's ledger read through a blocking database driver in a thread pool.

    python -m examples.period_calc            # 4 workers, then the advisor's count
    python -m examples.period_calc --workers 16

The ledger read sleeps (the driver waiting on the database); adding up the rows is a little
CPU. With too few workers, reads queue for the pool: the advisor sees queue wait dominate
I/O-bound calls and suggests ``max_workers``; the example reruns with it and prints both
throughputs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from examples._advice import advice_for, install, show

READ_S = 0.01  # one ledger query


def read_ledger(account: int, period: str) -> list[float]:
    """Blocking driver call: wait for the database, then build the rows."""
    time.sleep(READ_S)
    return [float((account * 31 + i) % 97) for i in range(200)]


async def account_total(pool: ThreadPoolExecutor, account: int, period: str) -> float:
    rows = await asyncio.get_running_loop().run_in_executor(pool, read_ledger, account, period)
    return sum(rows)


async def period_run(workers: int, accounts: int = 48, periods: int = 6) -> float:
    """Close ``periods`` periods of ``accounts`` accounts; accounts per second."""
    with ThreadPoolExecutor(workers, thread_name_prefix="ledger") as pool:
        began = time.perf_counter()
        for p in range(periods):
            totals = await asyncio.gather(
                *(account_total(pool, a, f"2026-{p + 1:02d}") for a in range(accounts))
            )
            assert len(totals) == accounts
        return accounts * periods / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    install()
    before = asyncio.run(period_run(args.workers))
    recs = advice_for("ThreadPoolExecutor 'ledger'")
    show(f"{args.workers} workers: {before:.0f} accounts/s", recs)
    out = {"workers": args.workers, "before": before}
    if recs and recs[0].suggested is not None and recs[0].knob == "max_workers":
        after = asyncio.run(period_run(recs[0].suggested))
        print(f"--- applied max_workers={recs[0].suggested}: {after:.0f} accounts/s "
              f"({after / before:.1f}x)")
        out.update(suggested=recs[0].suggested, after=after)
    return out


if __name__ == "__main__":
    main()
