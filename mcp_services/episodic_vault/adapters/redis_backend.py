"""Redis backend: episodes in hashes, ordered views in sorted sets, writes in Lua scripts.

Keys, all under vault.redis.key_prefix (P):

    P meta              hash: format version, last_seq, and counters (episodes, bytes,
                        consolidated, tier:<t>:count, tier:<t>:bytes) so totals() is one HMGET
    P ep:<id>           hash per episode: body (the encoded client content) and its columns
                        (seq, stored, src, energy, ref, tier, cons, hash, size, tags, tkey;
                        gver, the graph version, once consolidated)
    P by_time           sorted set, every score 0, members "<ts><seq><id>" (ts biased by 2^63 and
                        seq, each 16 hex digits) so lexicographic order is (timestamp, seq) order
                        and ListRecent pages with ZRANGE BYLEX REV, exactly, without float scores
    P by_seq            sorted set, id scored by seq: Scan
    P unconsolidated    sorted set, id scored by seq, unconsolidated episodes only: Scan that
                        skips consolidated ones
    P by_stored         sorted set, id scored by stored_ms, unconsolidated episodes only (the only
                        ones a purge may remove): PurgeTTL walks the oldest first
    P tag:<tag>         set of ids per tag: tag filters

Nothing ever runs KEYS or SCAN over the keyspace. Every write is one Lua script, which Redis runs
atomically: a put decides every outcome (CREATED, EXISTING, or IdConflict) before it writes
anything, so a conflicting batch changes nothing. The scripts derive per-episode and tag keys from
the prefix; on Redis Cluster put the prefix in a {hash tag} so they share a slot.

Durability is the server's: with appendonly yes and appendfsync always an acknowledged put
survives a crash of the machine; with the defaults (no AOF) it lives until the next RDB save.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis import exceptions as rex

from mcp_services.common.secrets_mask import mask_text
from mcp_services.episodic_vault.adapters.body import decode_body, encode_body
from mcp_services.episodic_vault.domain.backend import (
    BackendUnavailable,
    CapacityExceeded,
    IdConflict,
    SchemaTooNew,
)
from mcp_services.episodic_vault.domain.model import (
    Episode,
    EpisodeFilter,
    ListCursor,
    MarkOutcome,
    PutOutcome,
    PutStatus,
    Tier,
    TierCount,
    VaultStats,
)
from mcp_services.episodic_vault.settings import VaultRedisConfig

# The key layout above. Bump it (and teach open to migrate) when the layout changes.
FORMAT_VERSION = 1
# Offsets signed millisecond timestamps into 0..2^64 so their hex digits sort like the numbers.
_TS_BIAS = 1 << 63
_PREFIX_LEN = 32  # hex ts + hex seq in a by_time member, before the id

# Fixed keys, in the order the scripts receive them as KEYS[1..5].
_META, _BY_TIME, _BY_SEQ, _UNCONS, _BY_STORED = (
    "meta",
    "by_time",
    "by_seq",
    "unconsolidated",
    "by_stored",
)

# Removes one episode from every key; returns 1, or 0 when there was none.
_REMOVE_LUA = """
-- An integer argument for HINCRBY; plain negation of 0 gives -0, which Redis refuses.
local function neg(s)
  return string.format('%d', -tonumber(s))
end
local function remove(prefix, id)
  local key = prefix .. 'ep:' .. id
  local r = redis.call('HMGET', key, 'tkey', 'cons', 'tier', 'size', 'tags')
  if not r[1] then return 0 end
  redis.call('ZREM', KEYS[2], r[1])
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
  for _, tag in ipairs(cjson.decode(r[5])) do
    redis.call('SREM', prefix .. 'tag:' .. tag, id)
  end
  redis.call('DEL', key)
  redis.call('HINCRBY', KEYS[1], 'episodes', -1)
  redis.call('HINCRBY', KEYS[1], 'bytes', neg(r[4]))
  redis.call('HINCRBY', KEYS[1], 'consolidated', neg(r[2]))
  redis.call('HINCRBY', KEYS[1], 'tier:' .. r[3] .. ':count', -1)
  redis.call('HINCRBY', KEYS[1], 'tier:' .. r[3] .. ':bytes', neg(r[4]))
  return 1
end
"""

# ARGV: prefix, stored_ms, n, then _PUT_FIELDS values per episode.
# Returns {'conflict', id} or, per episode, 'created'|'existing' and its seq.
_PUT_FIELDS = 11
_PUT_LUA = """
local prefix, stored, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local F = 11
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0')
local batch = {}
local out = {}
local new = {}
-- Pass 1 decides every outcome without writing, so a conflict leaves the store untouched.
for i = 0, n - 1 do
  local b = 3 + i * F
  local id, hash = ARGV[b + 1], ARGV[b + 2]
  local prior = batch[id]
  if not prior then
    local row = redis.call('HMGET', prefix .. 'ep:' .. id, 'hash', 'seq')
    if row[1] then prior = {row[1], row[2]} end
  end
  if prior then
    if prior[1] ~= hash then return {'conflict', id} end
    out[#out + 1] = 'existing'
    out[#out + 1] = prior[2]
  else
    last = last + 1
    local seq = string.format('%d', last)
    batch[id] = {hash, seq}
    new[#new + 1] = {b, seq}
    out[#out + 1] = 'created'
    out[#out + 1] = seq
  end
end
for _, e in ipairs(new) do
  local b, seq = e[1], e[2]
  local id, tier, cons = ARGV[b + 1], ARGV[b + 7], ARGV[b + 8]
  local size, tags = ARGV[b + 9], ARGV[b + 11]
  local tkey = ARGV[b + 3] .. string.format('%016x', tonumber(seq)) .. id
  redis.call('HSET', prefix .. 'ep:' .. id,
    'hash', ARGV[b + 2], 'seq', seq, 'tkey', tkey, 'stored', stored, 'src', ARGV[b + 4],
    'energy', ARGV[b + 5], 'ref', ARGV[b + 6], 'tier', tier, 'cons', cons, 'size', size,
    'body', ARGV[b + 10], 'tags', tags)
  redis.call('ZADD', KEYS[2], 0, tkey)
  redis.call('ZADD', KEYS[3], seq, id)
  if cons == '0' then
    redis.call('ZADD', KEYS[4], seq, id)
    redis.call('ZADD', KEYS[5], stored, id)
  end
  for _, tag in ipairs(cjson.decode(tags)) do
    redis.call('SADD', prefix .. 'tag:' .. tag, id)
  end
  redis.call('HINCRBY', KEYS[1], 'episodes', 1)
  redis.call('HINCRBY', KEYS[1], 'bytes', size)
  redis.call('HINCRBY', KEYS[1], 'consolidated', cons)
  redis.call('HINCRBY', KEYS[1], 'tier:' .. tier .. ':count', 1)
  redis.call('HINCRBY', KEYS[1], 'tier:' .. tier .. ':bytes', size)
end
if #new > 0 then redis.call('HSET', KEYS[1], 'last_seq', string.format('%d', last)) end
return out
"""

# ARGV: prefix, id.
_DELETE_LUA = _REMOVE_LUA + "return remove(ARGV[1], ARGV[2])\n"

# ARGV: prefix, graph_version, then the ids (distinct). Returns {marked, already, missing ids...}.
_MARK_LUA = """
local prefix, version = ARGV[1], ARGV[2]
local marked, already = 0, 0
local missing = {}
local ltm = '3'
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = prefix .. 'ep:' .. id
  local r = redis.call('HMGET', key, 'cons', 'tier', 'size')
  if not r[1] then
    missing[#missing + 1] = id
  elseif r[1] == '1' then
    already = already + 1
  else
    redis.call('HSET', key, 'cons', '1', 'tier', ltm, 'gver', version)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('HINCRBY', KEYS[1], 'consolidated', 1)
    redis.call('HINCRBY', KEYS[1], 'tier:' .. r[2] .. ':count', -1)
    local neg = string.format('%d', -tonumber(r[3]))
    redis.call('HINCRBY', KEYS[1], 'tier:' .. r[2] .. ':bytes', neg)
    redis.call('HINCRBY', KEYS[1], 'tier:' .. ltm .. ':count', 1)
    redis.call('HINCRBY', KEYS[1], 'tier:' .. ltm .. ':bytes', r[3])
    marked = marked + 1
  end
end
return {marked, already, missing}
"""

# ARGV: prefix, cutoff_ms, keep_ref_count, limit, offset, dry_run ('1'|'0').
# One batch of the oldest unconsolidated episodes: returns {fetched, matched, kept}.
_PURGE_LUA = (
    _REMOVE_LUA
    + """
local prefix, keep, dry = ARGV[1], tonumber(ARGV[3]), ARGV[6] == '1'
local ids = redis.call('ZRANGE', KEYS[5], '-inf', '(' .. ARGV[2], 'BYSCORE',
  'LIMIT', ARGV[5], ARGV[4])
local matched, kept = 0, 0
for _, id in ipairs(ids) do
  local r = redis.call('HMGET', prefix .. 'ep:' .. id, 'ref', 'cons')
  if r[1] and tonumber(r[1]) < keep and r[2] == '0' then
    matched = matched + 1
    if not dry then remove(prefix, id) end
  else
    kept = kept + 1
  end
end
return {#ids, matched, kept}
"""
)


def _ts_hex(ts_ms: int) -> str:
    return f"{ts_ms + _TS_BIAS:016x}"


def _seq_hex(seq: int) -> str:
    return f"{seq:016x}"


@contextmanager
def _errors(url: str) -> Iterator[None]:
    """Map redis-py's errors to the backend hierarchy (domain/backend.py)."""
    try:
        yield
    except (rex.AuthenticationError, rex.AuthorizationError) as exc:
        # Subclasses of ConnectionError, but retrying cannot help: say which key to fix.
        raise BackendUnavailable(
            f"Redis at {url} refused the vault's credentials: {exc}; check vault.redis.password "
            "and the user in vault.redis.url"
        ) from exc
    except (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError) as exc:
        # ReadOnlyError: we reached a replica, typically mid-failover; a retry finds the primary.
        raise BackendUnavailable(
            f"Redis at {url} (vault.redis.url): {exc}; check the server and retry"
        ) from exc
    except rex.OutOfMemoryError as exc:
        raise CapacityExceeded(
            f"Redis at {url} reached its maxmemory: {exc}; purge, raise maxmemory, or move "
            "the vault to its own Redis"
        ) from exc


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs (common/secrets_mask.py)."""
    return mask_text(url)


class RedisBackend:
    """The VaultBackend contract over one Redis database, under one key prefix.

    Thread-safe: redis-py's client draws a connection from a blocking pool per call. Raises
    BackendUnavailable at construction when Redis cannot be reached, and SchemaTooNew when the
    prefix holds a layout newer than FORMAT_VERSION.
    """

    name = "redis"

    def __init__(self, cfg: VaultRedisConfig) -> None:
        self._cfg = cfg
        self._url = redacted(cfg.url)
        self._batch = cfg.batch_size
        kwargs: dict[str, Any] = {
            "max_connections": cfg.max_connections,
            "timeout": cfg.pool_timeout_s,
            "socket_connect_timeout": cfg.connect_timeout_s,
            "socket_timeout": cfg.socket_timeout_s,
            # Bodies are bytes; decoding replies would corrupt them.
            "decode_responses": False,
        }
        if cfg.password:
            kwargs["password"] = cfg.password
        if cfg.url.startswith("rediss://"):
            kwargs["ssl_cert_reqs"] = "required" if cfg.tls_verify else "none"
            kwargs["ssl_check_hostname"] = cfg.tls_verify
            if cfg.tls_ca_file:
                kwargs["ssl_ca_certs"] = cfg.tls_ca_file
            if cfg.tls_cert_file:
                kwargs["ssl_certfile"] = cfg.tls_cert_file
                kwargs["ssl_keyfile"] = cfg.tls_key_file
        self._pool = redis.BlockingConnectionPool.from_url(cfg.url, **kwargs)
        self._r = redis.Redis(connection_pool=self._pool)
        p = cfg.key_prefix
        self._prefix = p
        self._keys = [p + k for k in (_META, _BY_TIME, _BY_SEQ, _UNCONS, _BY_STORED)]
        self._meta, self._by_time, self._by_seq, self._uncons, self._by_stored = self._keys
        self._put = self._r.register_script(_PUT_LUA)
        self._delete = self._r.register_script(_DELETE_LUA)
        self._purge = self._r.register_script(_PURGE_LUA)
        self._mark = self._r.register_script(_MARK_LUA)
        try:
            self._check_format()
        except BaseException:
            self._pool.disconnect()
            raise

    def _check_format(self) -> None:
        with _errors(self._url):
            self._r.hsetnx(self._meta, "format", FORMAT_VERSION)
            found = int(cast(bytes, self._r.hget(self._meta, "format")))
        if found > FORMAT_VERSION:
            raise SchemaTooNew(
                f"Redis keys under {self._prefix!r} have layout version {found}, newer than this "
                f"release's {FORMAT_VERSION}; run the release that wrote them (migrations never "
                "run backwards)"
            )

    def _ep_key(self, episode_id: str | bytes) -> str | bytes:
        if isinstance(episode_id, bytes):
            return self._prefix.encode() + b"ep:" + episode_id
        return f"{self._prefix}ep:{episode_id}"

    # -- reads -------------------------------------------------------------------------------
    def _decode(self, h: dict[bytes, bytes]) -> Episode:
        return decode_body(
            h[b"body"],
            ref_count=int(h[b"ref"]),
            tier=int(h[b"tier"]),
            consolidated=h[b"cons"] == b"1",
            stored_ms=int(h[b"stored"]),
            seq=int(h[b"seq"]),
            content_hash=h[b"hash"].decode(),
            graph_version=int(h.get(b"gver", b"0")),
        )

    def _fetch(self, ids: Sequence[bytes]) -> list[Episode]:
        """The episodes with these ids, in order, skipping any deleted meanwhile."""
        out: list[Episode] = []
        for i in range(0, len(ids), self._batch):
            pipe = self._r.pipeline(transaction=False)
            for episode_id in ids[i : i + self._batch]:
                pipe.hgetall(self._ep_key(episode_id))
            out += [self._decode(h) for h in pipe.execute() if h]
        return out

    def get(self, episode_id: str) -> Episode | None:
        with _errors(self._url):
            h = cast(dict[bytes, bytes], self._r.hgetall(self._ep_key(episode_id)))
        return self._decode(h) if h else None

    def get_many(self, episode_ids: Sequence[str]) -> dict[str, Episode]:
        if not episode_ids:
            return {}
        with _errors(self._url):
            pipe = self._r.pipeline(transaction=False)
            for episode_id in episode_ids:
                pipe.hgetall(self._ep_key(episode_id))
            replies = cast(list[dict[bytes, bytes]], pipe.execute())
        return {ep.id: ep for ep in (self._decode(h) for h in replies if h)}

    def _matching(self, ids: list[bytes], flt: EpisodeFilter) -> list[bytes]:
        """The ids whose columns pass the filter's source, energy and tag conditions."""
        pipe = self._r.pipeline(transaction=False)
        for episode_id in ids:
            pipe.hmget(self._ep_key(episode_id), ["src", "energy"])
        for tag in flt.tags:
            pipe.smismember(f"{self._prefix}tag:{tag}", ids)
        replies = pipe.execute()
        columns, tag_hits = replies[: len(ids)], replies[len(ids) :]
        keep: list[bytes] = []
        for i, (episode_id, (src, energy)) in enumerate(zip(ids, columns, strict=True)):
            if src is None:  # deleted meanwhile
                continue
            if flt.source_type and src.decode() != flt.source_type:
                continue
            if flt.min_energy > 0 and float(energy) < flt.min_energy:
                continue
            if all(hits[i] for hits in tag_hits):
                keep.append(episode_id)
        return keep

    def list_recent(
        self, flt: EpisodeFilter, limit: int, after: ListCursor | None
    ) -> list[Episode]:
        # Exclusive upper bounds compare as strings; the smaller one is the tighter.
        uppers = []
        if after is not None:
            uppers.append(_ts_hex(after.timestamp_ms) + _seq_hex(after.seq))
        if flt.until_ms is not None:
            uppers.append(_ts_hex(flt.until_ms))
        hi: bytes = b"(" + min(uppers).encode() if uppers else b"+"
        lo: bytes = b"[" + _ts_hex(flt.since_ms).encode() if flt.since_ms is not None else b"-"
        filtered = bool(flt.source_type or flt.min_energy > 0 or flt.tags)
        out: list[Episode] = []
        with _errors(self._url):
            while len(out) < limit:
                # Unfiltered, every member is a hit: read no more than the page needs.
                num = self._batch if filtered else min(self._batch, limit - len(out))
                members = cast(
                    list[bytes],
                    self._r.zrange(self._by_time, hi, lo, desc=True, bylex=True, offset=0, num=num),
                )
                ids = [m[_PREFIX_LEN:] for m in members]
                if filtered:
                    ids = self._matching(ids, flt)
                # The whole batch's hits, so none is skipped if some vanished meanwhile.
                out += self._fetch(ids)
                if len(members) < num:
                    break
                hi = b"(" + members[-1]
        return out[:limit]

    def scan(self, after_seq: int, limit: int, only_unconsolidated: bool) -> list[Episode]:
        key = self._uncons if only_unconsolidated else self._by_seq
        with _errors(self._url):
            ids = cast(
                list[bytes],
                self._r.zrange(key, f"({after_seq}", "+inf", byscore=True, offset=0, num=limit),
            )
            return self._fetch(ids)

    def totals(self) -> tuple[int, int]:
        with _errors(self._url):
            count, size = cast(list[bytes | None], self._r.hmget(self._meta, ["episodes", "bytes"]))
        return int(count or 0), int(size or 0)

    def stats(self) -> VaultStats:
        # MULTI/EXEC so the counters and the time span describe one moment.
        pipe = self._r.pipeline(transaction=True)
        pipe.hgetall(self._meta)
        pipe.zrange(self._by_time, 0, 0)
        pipe.zrange(self._by_time, -1, -1)
        with _errors(self._url):
            meta, first, last = pipe.execute()
        m = {k.decode(): int(v) for k, v in meta.items()}
        tiers = tuple(
            TierCount(t, m.get(f"tier:{int(t)}:count", 0), m.get(f"tier:{int(t)}:bytes", 0))
            for t in Tier
            if m.get(f"tier:{int(t)}:count", 0) > 0
        )

        def ts(members: list[bytes]) -> int | None:
            return int(members[0][:16], 16) - _TS_BIAS if members else None

        return VaultStats(
            episode_count=m.get("episodes", 0),
            size_bytes=m.get("bytes", 0),
            consolidated_count=m.get("consolidated", 0),
            last_seq=m.get("last_seq", 0),
            oldest_ms=ts(first),
            newest_ms=ts(last),
            tiers=tiers,
        )

    # -- writes ------------------------------------------------------------------------------
    def put_many(self, episodes: Sequence[Episode], stored_ms: int) -> list[PutOutcome]:
        if not episodes:
            return []
        args: list[str | bytes | int] = [self._prefix, stored_ms, len(episodes)]
        sizes: list[int] = []
        for ep in episodes:
            body = encode_body(ep)
            sizes.append(len(body))
            args += [
                ep.id,
                ep.content_hash,
                _ts_hex(ep.timestamp_ms),
                ep.source.type,
                repr(ep.energy),
                ep.ref_count,
                int(ep.tier),
                int(ep.consolidated),
                len(body),
                body,
                json.dumps(list(ep.tags), ensure_ascii=False),
            ]
        assert len(args) == 3 + _PUT_FIELDS * len(episodes)
        with _errors(self._url):
            reply = cast(list[bytes], self._put(keys=self._keys, args=args))
        if reply[0] == b"conflict":
            raise IdConflict(reply[1].decode())
        return [
            PutOutcome(ep.id, PutStatus.CREATED, int(seq), ep.content_hash, size)
            if status == b"created"
            else PutOutcome(ep.id, PutStatus.EXISTING, int(seq), ep.content_hash)
            for ep, size, status, seq in zip(episodes, sizes, reply[0::2], reply[1::2], strict=True)
        ]

    def delete(self, episode_id: str) -> bool:
        with _errors(self._url):
            return bool(self._delete(keys=self._keys, args=[self._prefix, episode_id]))

    def delete_many(self, episode_ids: Sequence[str]) -> int:
        """The delete script once per id, pipelined (one round trip per batch_size ids); each
        delete is atomic, the call as a whole is not."""
        ids = list(dict.fromkeys(episode_ids))
        deleted = 0
        with _errors(self._url):
            for i in range(0, len(ids), self._batch):
                pipe = self._r.pipeline(transaction=False)
                for episode_id in ids[i : i + self._batch]:
                    self._delete(keys=self._keys, args=[self._prefix, episode_id], client=pipe)
                deleted += sum(bool(r) for r in pipe.execute())
        return deleted

    def mark_consolidated(self, episode_ids: Sequence[str], graph_version: int) -> MarkOutcome:
        """One atomic script for the whole call (at most 10000 ids, a few ms of server time)."""
        ids = list(dict.fromkeys(episode_ids))
        if not ids:
            return MarkOutcome(0, 0, ())
        with _errors(self._url):
            marked, already, missing = cast(
                list[Any],
                self._mark(keys=self._keys, args=[self._prefix, graph_version, *ids]),
            )
        return MarkOutcome(int(marked), int(already), tuple(m.decode() for m in missing))

    def purge_expired(self, stored_before_ms: int, keep_ref_count: int, dry_run: bool) -> int:
        """Walks by_stored in batches of batch_size, each batch one atomic script; the purge as a
        whole is not atomic, so a put or delete between batches is seen or not."""
        total, offset = 0, 0
        with _errors(self._url):
            while True:
                fetched, matched, kept = cast(
                    list[int],
                    self._purge(
                        keys=self._keys,
                        args=[
                            self._prefix, stored_before_ms, keep_ref_count, self._batch, offset,
                            int(dry_run),
                        ],
                    ),
                )  # fmt: skip
                total += matched
                # Removed episodes leave the index, so only what stayed is stepped over.
                offset += fetched if dry_run else kept
                if fetched < self._batch:
                    return total

    def close(self) -> None:
        self._pool.disconnect()
