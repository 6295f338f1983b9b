"""What queueing alone allows: p99 latency of equal-sized calls under Poisson arrivals on one server.

A call of N items on a compute-bound server takes a fixed time D when it runs alone.
Under Poisson arrivals at utilisation rho, a FIFO server (M/D/1) makes a call wait
behind the calls that arrived before it; this script simulates that and prints the
p50/p99 of the time in the system as a multiple of D. It is the yardstick for the
"p99 at half load <= 2x unloaded" target in docs/benchmarks.md: no scheduler that
runs each call at full machine speed beats it unless batching makes calls cheaper
under load.

    python benchmarks/queueing.py [--calls 400000] [--rho 0.3,0.5,0.8]
"""

from __future__ import annotations

import argparse
import json
import random


def md1_sojourn_times(rho: float, calls: int, seed: int = 1) -> list[float]:
    """Times in system / D of ``calls`` calls through an M/D/1 FIFO queue at utilisation ``rho``."""
    rng = random.Random(seed)
    t = free = 0.0
    soj = []
    for _ in range(calls):
        t += rng.expovariate(rho)  # service time D = 1, so the arrival rate equals rho
        start = max(t, free)
        free = start + 1.0
        soj.append(free - t)
    return soj


def md1_sojourn_quantiles(rho: float, calls: int, seed: int = 1) -> dict[str, float]:
    """p50/p90/p99 of time in system / D."""
    soj = sorted(md1_sojourn_times(rho, calls, seed))
    pick = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    return {q: round(soj[min(len(soj) - 1, int(len(soj) * f))], 2) for q, f in pick.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=400_000)
    ap.add_argument("--rho", default="0.3,0.5,0.8")
    args = ap.parse_args()
    for rho in (float(x) for x in args.rho.split(",")):
        print(json.dumps({"rho": rho, **md1_sojourn_quantiles(rho, args.calls)}))


if __name__ == "__main__":
    main()
