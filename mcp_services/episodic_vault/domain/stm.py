"""STM: the bounded hot tier, in process, in front of the durable backend.

Write-through: an episode enters STM only after the backend acknowledged it, so evicting one (by
capacity in episodes or in bytes, least recently used first, or by TTL since it was written) loses
nothing; it is then served from MTM. Reads of a hot episode skip the backend. The byte cap keeps
the tier's memory bounded whatever the payloads: 10 000 episodes of 1 MB would be 10 GB.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict

from mcp_services.episodic_vault.domain.model import Episode, Tier


class ShortTermTier:
    def __init__(self, capacity: int, ttl_s: float, max_bytes: int = 0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes  # 0: no byte cap
        self._lock = threading.Lock()
        # id -> (episode as stored, monotonic deadline); order is least recently used first.
        self._items: OrderedDict[str, tuple[Episode, float]] = OrderedDict()
        self._bytes = 0

    def put(self, ep: Episode) -> list[str]:
        """Hold `ep` (tier STM); the ids evicted to make room."""
        if self.capacity == 0:
            return []
        hot = ep if ep.tier is Tier.STM else dataclasses.replace(ep, tier=Tier.STM)
        with self._lock:
            old = self._items.pop(ep.id, None)
            if old is not None:
                self._bytes -= old[0].size_bytes
            self._items[ep.id] = (hot, time.monotonic() + self.ttl_s)
            self._bytes += ep.size_bytes
            evicted = []
            while len(self._items) > self.capacity or (
                self.max_bytes and self._bytes > self.max_bytes and self._items
            ):
                victim, (vep, _) = self._items.popitem(last=False)
                self._bytes -= vep.size_bytes
                evicted.append(victim)
            return evicted

    def get(self, episode_id: str) -> Episode | None:
        with self._lock:
            item = self._items.get(episode_id)
            if item is None:
                return None
            if item[1] <= time.monotonic():
                return None  # expired; expire() removes it
            self._items.move_to_end(episode_id)
            return item[0]

    def __contains__(self, episode_id: str) -> bool:
        with self._lock:
            return episode_id in self._items

    def remove(self, episode_id: str) -> bool:
        with self._lock:
            item = self._items.pop(episode_id, None)
            if item is None:
                return False
            self._bytes -= item[0].size_bytes
            return True

    def expire(self) -> list[str]:
        """Drop the episodes past their TTL; their ids."""
        now = time.monotonic()
        with self._lock:
            gone = [i for i, (_, deadline) in self._items.items() if deadline <= now]
            for i in gone:
                self._bytes -= self._items.pop(i)[0].size_bytes
            return gone

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return len(self._items), self._bytes
