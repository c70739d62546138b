"""Which acknowledged episodes the vault must still hold, when its configuration lets it evict.

A vault whose tiers have `max_items` deletes its least important episodes (importance pruning,
vault.tiers). A load run against such a vault cannot demand every acknowledged episode back, but
it can still catch a real loss:

* ``all`` (no tier limit): every acknowledged episode must be readable.
* ``consolidated`` (ltm.max_items set, mtm.max_items 0): only consolidated (LTM) episodes can be
  pruned, and hot STM episodes never are. An episode becomes consolidated only through a
  consolidation cycle that read it from the vault, i.e. a cycle still running, or one that
  finished after the episode was sent. So an episode sent at or after the *horizon* -- the newest
  cycle's finish time, or "now" while a cycle runs -- cannot have been pruned: missing, it is lost.
  The horizon comes from the scheduler (GetReplayStats lists its recent jobs, newest first), read
  *after* the episode was found missing, so a cycle that read it is always seen.
* ``any`` (mtm.max_items set too): any episode may be pruned; only the books are checked.

In every mode the books must balance: the episodes found missing and not protected (counted as
*evicted*) can be no more than the vault's own count of pruned episodes (its
``vault_pruned_episodes`` metric); the excess is lost too.

Send times are kept as checkpoints (episode number, wall-clock ms) at most every 100 ms, so a 24 h
run holds ~1 MB; an episode's send time is read as its checkpoint's, a lower bound, which errs
towards calling an episode evictable (never towards a false loss). The scheduler and the load
generator are assumed to share a clock (same host, or synchronised).
"""

from __future__ import annotations

import bisect
import time
import urllib.request
from array import array
from typing import Literal

from mcp_services.episodic_vault.settings import TiersConfig
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc

Retention = Literal["all", "consolidated", "any"]
RETENTIONS: tuple[Retention, ...] = ("all", "consolidated", "any")
PRUNED_METRIC = "vault_pruned_episodes"
_CHECKPOINT_MS = 100


def retention_of(tiers: TiersConfig) -> Retention:
    """What the vault's tier limits allow it to evict."""
    if tiers.mtm.max_items > 0:
        return "any"
    if tiers.ltm.max_items > 0:
        return "consolidated"
    return "all"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SendTimes:
    """Lower bounds of when each episode number was sent (numbers are sent in increasing order)."""

    def __init__(self) -> None:
        self._n = array("q")
        self._ms = array("q")

    def sent(self, n: int, now_ms: int | None = None) -> None:
        ms = _now_ms() if now_ms is None else now_ms
        if not self._ms or ms - self._ms[-1] >= _CHECKPOINT_MS:
            self._n.append(n)
            self._ms.append(ms)

    def lower_bound_ms(self, n: int) -> int:
        """A time at or before episode n was sent (0 when n precedes every checkpoint)."""
        i = bisect.bisect_right(self._n, n) - 1
        return int(self._ms[i]) if i >= 0 else 0


def horizon_of(stats: sleep_pb2.ReplayStats, now_ms: int) -> int:
    """The newest consolidation's finish time in ms (now while one is running; 0 before any)."""
    horizon = 0
    for job in stats.recent:
        if job.state in (sleep_pb2.JOB_STATE_PENDING, sleep_pb2.JOB_STATE_RUNNING):
            return now_ms
        if job.HasField("finished_at"):
            horizon = max(horizon, job.finished_at.ToMilliseconds())
    return horizon


class RetentionCheck:
    """Classifies a missing acknowledged episode as evicted (allowed) or lost."""

    def __init__(
        self,
        mode: Retention,
        scheduler: sleep_pb2_grpc.SleepSchedulerStub | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout_s: float = 10.0,
    ) -> None:
        self.mode = mode
        self.times = SendTimes()
        self.scheduler = scheduler
        self._metadata = metadata
        self._timeout = timeout_s
        self.horizon_ms = 0  # only ever grows: a cached value is a safe reason to call evictable

    async def refresh(self) -> int:
        """Read the horizon from the scheduler (raises grpc.aio.AioRpcError when it is away)."""
        assert self.scheduler is not None, "mode 'consolidated' needs the scheduler"
        stats = await self.scheduler.GetReplayStats(
            sleep_pb2.GetReplayStatsRequest(), timeout=self._timeout, metadata=self._metadata
        )
        self.horizon_ms = max(self.horizon_ms, horizon_of(stats, _now_ms()))
        return self.horizon_ms

    async def may_be_evicted(self, n: int) -> bool:
        """Whether episode n, found missing just now, may have been pruned by the vault."""
        if self.mode == "all":
            return False
        if self.mode == "any":
            return True
        sent = self.times.lower_bound_ms(n)
        if sent < self.horizon_ms:
            return True
        return sent < await self.refresh()


def scrape_pruned(metrics_target: str, timeout_s: float = 10.0) -> int:
    """The vault's count of episodes deleted by importance pruning (all tiers), from /metrics.

    Raises OSError when the endpoint cannot be read and ValueError when it has no such metric.
    """
    url = f"http://{metrics_target}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # a metrics URL: plain http
        text = resp.read().decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(PRUNED_METRIC + "{") or line.startswith(PRUNED_METRIC + " "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    if not seen:
        raise ValueError(f"{url} has no {PRUNED_METRIC}: is {metrics_target} a vault's metrics?")
    return int(total)
