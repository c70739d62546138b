"""The cross-replica consolidation lease: one cycle at a time, freed if its holder dies.

A Redis key holds the holder's token with a time-to-live. The holder renews it every third of
the TTL while it works; renewal and release compare the token first (a Lua script, atomic on the
server), so a holder whose lease expired can never renew or delete its successor's. If the
holder's process dies the key simply expires within one TTL.

Without Redis (``redis.url`` empty) the lease is process-local: fine for one replica, and said
so in the log at start.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from ulid import ULID

from mcp_services.common.config_schema import RedisConfig

log = structlog.get_logger(__name__)

LEASE_KEY: Final = "tori:sleep:consolidation-lease"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaseUnavailable(Exception):
    """Redis could not be reached to take or check the lease."""


class Lease:
    """Take, renew and release the consolidation lease.

    Args:
        cfg: the Redis connection (empty url: a process-local lease).
        ttl_s: seconds after which an unrenewed lease expires.
        key: the Redis key (tests use their own).
    """

    def __init__(self, cfg: RedisConfig, ttl_s: float, key: str = LEASE_KEY) -> None:
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.key = key
        self._local = asyncio.Lock()
        self._client: aioredis.Redis | None = None
        if cfg.url:
            self._client = aioredis.Redis.from_url(
                cfg.url,
                password=cfg.password or None,
                socket_connect_timeout=cfg.connect_timeout_s,
                socket_timeout=max(cfg.connect_timeout_s, 2.0),
            )
        else:
            log.warning("lease_local_only", reason="redis.url is empty: one replica at a time")
        self.token: str | None = None

    @property
    def distributed(self) -> bool:
        return self._client is not None

    async def holder(self) -> str | None:
        """The current holder's token, None when free."""
        if self._client is None:
            return self.token
        try:
            raw = await self._client.get(self.key)
        except (RedisError, OSError) as exc:
            raise LeaseUnavailable(f"Redis is unreachable for the lease: {exc}") from exc
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def acquire(self, owner: str) -> bool:
        """Take the lease for ``owner`` (a readable prefix of the token); False when held."""
        if self._local.locked():
            return False
        await self._local.acquire()
        token = f"{owner}:{ULID()}"
        if self._client is not None:
            try:
                ok = await self._client.set(self.key, token, nx=True, px=self.ttl_ms)
            except (RedisError, OSError) as exc:
                self._local.release()
                raise LeaseUnavailable(f"Redis is unreachable for the lease: {exc}") from exc
            if not ok:
                self._local.release()
                return False
        self.token = token
        return True

    async def renew(self) -> bool:
        """Extend the lease by one TTL; False when it is no longer ours (expired or taken)."""
        if self.token is None:
            return False
        if self._client is None:
            return True
        try:
            res = await self._client.eval(_RENEW, 1, self.key, self.token, str(self.ttl_ms))
        except (RedisError, OSError) as exc:
            log.warning("lease_renew_failed", error=str(exc))
            return False
        return bool(res)

    async def release(self) -> None:
        """Give the lease up (only if it is still ours)."""
        token, self.token = self.token, None
        if token is not None and self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.eval(_RELEASE, 1, self.key, token)
        if self._local.locked():
            self._local.release()

    async def keep_alive(self, lost: asyncio.Event) -> None:
        """Renew every third of the TTL until cancelled; set ``lost`` if a renewal fails."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            if not await self.renew():
                log.error("lease_lost", key=self.key)
                lost.set()
                return

    async def close(self) -> None:
        await self.release()
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
