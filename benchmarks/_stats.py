"""The percentile every latency in the benchmark report is given by (``bench_client.py``,
``relay_floor.py``), so that the relay's floor and the clusters' rows compare like for like."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float | None:
    """The smallest value with at least ``q`` of ``values`` at or below it; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]
