"""`tori-ops health-check`: every service's gRPC health and metrics page, Redis, and the vault's
storage backend, in one table; exit 0 when everything answers, 1 otherwise (for scripts and cron).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psycopg
import redis

from mcp_services.common import metric_names as names
from mcp_services.common.clients import endpoint_address, reachable_host
from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.common.config_schema import Endpoint, Settings
from mcp_services.common.health import check
from mcp_services.fleet.processes import FleetState


@dataclass(frozen=True)
class Probe:
    """One thing checked: what, where, whether it is healthy, and what was seen."""

    component: str
    target: str
    ok: bool
    detail: str
    ms: float


def _timed(component: str, target: str, fn: Callable[[], tuple[bool, str]]) -> Probe:
    start = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as exc:  # every failure is reported, never raised
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Probe(component, target, bool(ok), str(detail), (time.perf_counter() - start) * 1e3)


def probe_grpc(name: str, ep: Endpoint, timeout: float) -> Probe:
    target = endpoint_address(ep)

    def go() -> tuple[bool, str]:
        status = check(target, timeout=timeout)
        return status == "SERVING", status

    return _timed(f"{name}.grpc", target, go)


def probe_metrics(name: str, ep: Endpoint, timeout: float) -> Probe:
    url = f"http://{reachable_host(ep.metrics_host)}:{ep.metrics_port}/metrics"

    def go() -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = resp.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            return False, f"unreachable ({exc})"
        if names.SERVICE_INFO not in body:
            return False, f"answers but has no {names.SERVICE_INFO}: is this a TORI service?"
        return True, f"{len(body.splitlines())} lines"

    return _timed(f"{name}.metrics", url, go)


def probe_redis(component: str, url: str, password: str, timeout: float) -> Probe:
    def go() -> tuple[bool, str]:
        client = redis.Redis.from_url(
            url, password=password or None, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            client.ping()
            info = client.info("server")
            return True, f"redis {info.get('redis_version', '?')}"
        finally:
            client.close()

    return _timed(component, url, go)


def probe_backend(settings: Settings, timeout: float) -> Probe:
    vault = settings.vault
    if vault.backend == "redis":
        return probe_redis("vault.backend", vault.redis.url, vault.redis.password, timeout)
    if vault.backend == "postgres":

        def go_pg() -> tuple[bool, str]:
            with psycopg.connect(vault.postgres.dsn, connect_timeout=max(2, int(timeout))) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            return True, f"postgres {row[0] if row else '?'}"

        return _timed("vault.backend", "postgres", go_pg)
    if vault.backend == "sqlite":
        path = resolve_path(vault.sqlite.path)

        def go_sqlite() -> tuple[bool, str]:
            if not path.exists():
                return False, "no database file yet (the vault creates it on first start)"
            # Opened read-only and read, so a corrupt or foreign file fails here, not in the vault.
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout) as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return True, f"schema version {version}, {path.stat().st_size} bytes"

        return _timed("vault.backend", str(path), go_sqlite)
    return Probe("vault.backend", "memory", True, "in-process; nothing to reach", 0.0)


def _fleet_redis(settings: Settings) -> str:
    """The private Redis a local fleet (`make up`) started, when REDIS_URL is not set."""
    for rec in FleetState(resolve_path(settings.paths.var_dir)).load():
        if rec.name == "redis" and rec.endpoint:
            return rec.endpoint
    return ""


def probe_all(settings: Settings, only: list[str] | None, timeout: float) -> list[Probe]:
    probes: list[Probe] = []
    for name in type(settings.services).model_fields:
        if only and name not in only:
            continue
        ep: Endpoint = getattr(settings.services, name)
        probes.append(probe_grpc(name, ep, timeout))
        probes.append(probe_metrics(name, ep, timeout))
    if not only or "redis" in only:
        url = settings.redis.url or _fleet_redis(settings)
        if url:
            probes.append(probe_redis("redis", url, settings.redis.password, timeout))
        else:
            probes.append(Probe("redis", "-", True, "not configured (events off)", 0.0))
    if not only or "episodic_vault" in only or "backend" in only:
        probes.append(probe_backend(settings, timeout))
    return probes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only",
        action="append",
        help="check only this component: a service name (episodic_vault, ...), redis or backend",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per probe (default 2)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_config()
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    probes = probe_all(settings, args.only, args.timeout)
    if args.only and not probes:
        print(f"error: nothing matches --only {args.only}")
        return 2
    if args.json:
        print(json.dumps([asdict(p) for p in probes], indent=2))
    else:
        for p in probes:
            mark = "ok  " if p.ok else "FAIL"
            print(f"{mark} {p.component:<28} {p.target:<40} {p.ms:7.1f} ms  {p.detail}")
    failed = [p for p in probes if not p.ok]
    if not args.json:
        print(f"{len(probes) - len(failed)}/{len(probes)} healthy")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tori-ops health-check", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
