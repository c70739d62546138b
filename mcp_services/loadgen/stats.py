"""Counters and latency histograms of a load run, in constant memory however long it runs."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Log-spaced buckets from 10 µs to 100 s, 50 per decade: a percentile is off by at most ~5%.
_LO, _DECADES, _PER_DECADE = 1e-5, 7, 50
_NBUCKETS = _DECADES * _PER_DECADE + 2


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = np.zeros(_NBUCKETS, dtype=np.int64)
        self.n = 0
        self.max_s = 0.0

    def observe(self, seconds: float) -> None:
        if seconds <= _LO:
            i = 0
        else:
            i = min(_NBUCKETS - 1, 1 + int(math.log10(seconds / _LO) * _PER_DECADE))
        self.counts[i] += 1
        self.n += 1
        self.max_s = max(self.max_s, seconds)

    def percentile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-th percentile, in seconds (0 when empty)."""
        if self.n == 0:
            return 0.0
        rank = math.ceil(q / 100 * self.n)
        i = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1)))
        upper = _LO * 10 ** (i / _PER_DECADE)
        return min(upper, self.max_s)

    def reset(self) -> None:
        self.counts[:] = 0
        self.n = 0
        self.max_s = 0.0


@dataclass
class OpStats:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by gRPC status code name
    busy: int = 0  # a trigger refused because one was already running: not an error
    evicted: int = 0  # a read of an episode the vault was allowed to prune: not an error
    outcomes: Counter[str] = field(default_factory=Counter)  # trigger jobs by final state
    refusals: dict[str, str] = field(default_factory=dict)  # code -> the last refusal's message
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    window: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record(self, seconds: float, code: str | None) -> None:
        if code is None:
            self.ok += 1
            self.latency.observe(seconds)
            self.window.observe(seconds)
        else:
            self.errors[code] += 1

    @property
    def total(self) -> int:
        return self.ok + self.busy + self.evicted + sum(self.errors.values())

    def summary(self) -> dict[str, object]:
        h = self.latency
        return {
            "ok": self.ok,
            "errors": dict(self.errors),
            "busy": self.busy,
            **({"evicted": self.evicted} if self.evicted else {}),
            **({"jobs": dict(self.outcomes)} if self.outcomes else {}),
            **({"refusals": dict(self.refusals)} if self.refusals else {}),
            "p50_ms": round(h.percentile(50) * 1e3, 3),
            "p95_ms": round(h.percentile(95) * 1e3, 3),
            "p99_ms": round(h.percentile(99) * 1e3, 3),
            "max_ms": round(h.max_s * 1e3, 3),
        }
