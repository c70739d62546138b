"""The local fleet: every service as a process on this machine, no Docker engine needed.

    python -m mcp_services.fleet up       # Redis (configured, else private), then the services
    python -m mcp_services.fleet status   # pid, health and endpoints; exit 3 if any is not SERVING
    python -m mcp_services.fleet down     # stop exactly what `up` started

`up` starts every service with auth on: the configured service keys, else a key file it makes
under the var dir (fleet/keys.py). It starts services in dependency order and waits for each to
report SERVING over gRPC health before starting the next; if one fails it prints the end of its
log, stops what it had started, and exits 1. Ports, data and logs come from the configuration
(config/, environment), so a second fleet with other ports and TORI_VAR_DIR runs beside the first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import endpoint_address, reachable_host
from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.common.config_schema import Endpoint, Settings
from mcp_services.common.health import check, wait_serving
from mcp_services.common.secrets_mask import mask_text
from mcp_services.fleet.keys import ensure_fleet_keys
from mcp_services.fleet.processes import (
    FleetState,
    ProcessRecord,
    is_running,
    python_module_argv,
    spawn,
    stop,
    tail,
)
from mcp_services.fleet.redis_server import RedisNotFound, ping, redis_argv, wait_ready
from mcp_services.gateway import health as gateway_health


@dataclass(frozen=True)
class ServiceDef:
    name: str
    module: str
    endpoint_key: str
    # grpc: waits on gRPC health at services.<endpoint_key>; http: the MCP gateway's /healthz.
    kind: str = "grpc"


# Dependency order: the scheduler and the learner read the vault; the pruner commits through the
# scheduler. `down` stops them in reverse.
SERVICES: tuple[ServiceDef, ...] = (
    ServiceDef("episodic-vault", "mcp_services.episodic_vault.server", "episodic_vault"),
    ServiceDef("sleep-scheduler", "mcp_services.sleep_scheduler.server", "sleep_scheduler"),
    ServiceDef("sparse-pruner", "mcp_services.sparse_pruner.server", "sparse_pruner"),
    ServiceDef("koopman-learner", "mcp_services.koopman_learner.server", "koopman_learner"),
    # Last: it fronts the others (and starts without them; its tools name a service that is down).
    ServiceDef("mcp-gateway", "mcp_services.gateway", "gateway", kind="http"),
)


def endpoint_of(settings: Settings, svc: ServiceDef) -> tuple[str, str]:
    if svc.kind == "http":
        g = settings.gateway
        return (
            f"http://{reachable_host(g.host)}:{g.port}{g.path}",
            f"http://{reachable_host(g.metrics_host)}:{g.metrics_port}/metrics",
        )
    ep: Endpoint = getattr(settings.services, svc.endpoint_key)
    return (
        endpoint_address(ep),
        f"http://{reachable_host(ep.metrics_host)}:{ep.metrics_port}/metrics",
    )


def _alive(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is None


def _fail(msg: str) -> int:
    print(f"fleet: {msg}", file=sys.stderr)
    return 1


def up(settings: Settings, var_dir: Path) -> int:
    state = FleetState(var_dir)
    existing = state.load()
    if existing:
        alive = [r for r in existing if is_running(r)]
        if alive:
            names = ", ".join(r.name for r in alive)
            return _fail(
                f"already running ({names}); `make status` to see it, `make down` to stop it"
            )
        state.clear()

    env = dict(os.environ)
    env["TORI_VAR_DIR"] = str(var_dir)
    records: list[ProcessRecord] = []
    grace = settings.grpc.shutdown_grace_s + 5

    def abort(msg: str) -> int:
        for rec in reversed(records):
            stop(rec, grace)
        state.clear()
        return _fail(msg)

    redis_url = settings.redis.url
    if redis_url:
        reason = ping(redis_url, settings.redis.connect_timeout_s)
        if reason is not None:
            return _fail(
                f"redis.url {mask_text(redis_url)} does not answer ({reason}); start that Redis, "
                "or unset REDIS_URL and the fleet starts a private one"
            )
        print(f"redis            {mask_text(redis_url)} (configured)")
    else:
        port = settings.fleet.redis_port
        redis_url = f"redis://127.0.0.1:{port}/0"
        if ping(redis_url, 0.3) is None:
            return _fail(
                f"port {port} already has a Redis that this fleet did not start; set REDIS_URL to "
                "use it, or FLEET_REDIS_PORT to start a private one elsewhere"
            )
        try:
            argv = redis_argv(port, var_dir / "redis")
        except RedisNotFound as exc:
            return _fail(str(exc))
        _, rec = spawn("redis", argv, env, state.log_dir)
        records.append(replace(rec, endpoint=redis_url))
        state.save(records)
        if not wait_ready(redis_url, 15):
            return abort(f"private Redis on port {port} did not start:\n{tail(rec.log_file)}")
        print(f"redis            {redis_url} (private, data in {var_dir / 'redis'})")
        env["REDIS_URL"] = redis_url

    try:
        key_file, keys_from = ensure_fleet_keys(settings)
    except AuthConfigError as exc:
        return abort(str(exc))
    if key_file is not None:
        env["TORI_API_KEYS_FILE"] = str(key_file)
    print(f"service auth     on, keys from {keys_from}")

    for svc in SERVICES:
        target, metrics = endpoint_of(settings, svc)
        proc, rec = spawn(svc.name, python_module_argv(svc.module), env, state.log_dir)
        rec = replace(rec, endpoint=target, metrics=metrics)
        records.append(rec)
        state.save(records)
        wait = gateway_health.wait_serving if svc.kind == "http" else wait_serving
        probe = gateway_health.healthz_url(settings.gateway) if svc.kind == "http" else target
        if not wait(probe, settings.fleet.start_timeout_s, alive=_alive(proc)):
            code = proc.poll()
            why = f"exited with code {code}" if code is not None else "did not report SERVING"
            return abort(f"{svc.name} {why}; last lines of {rec.log_file}:\n{tail(rec.log_file)}")
        print(f"{svc.name:<16} {svc.kind:<4} {target:<22} metrics {metrics}")
    print(f"fleet up: {len(records)} processes, logs in {state.log_dir}")
    return 0


def down(settings: Settings, var_dir: Path) -> int:
    state = FleetState(var_dir)
    records = state.load()
    if not records:
        print("fleet: nothing to stop (no fleet started from this var dir)")
        return 0
    grace = settings.grpc.shutdown_grace_s + 5
    for rec in reversed(records):
        print(f"{rec.name:<16} pid {rec.pid:<8} {stop(rec, grace)}")
    state.clear()
    return 0


def status(settings: Settings, var_dir: Path) -> int:
    records = FleetState(var_dir).load()
    if not records:
        print("fleet: not running (no fleet started from this var dir)")
        return 3
    healthy = True
    for rec in records:
        running = is_running(rec)
        if rec.name == "redis":
            health = "PONG" if running and ping(rec.endpoint) is None else "DOWN"
        elif rec.endpoint.startswith("http"):
            url = rec.endpoint.rsplit("/", 1)[0] + "/healthz"
            health = gateway_health.check(url) if running else "DOWN"
        else:
            health = check(rec.endpoint) if running else "DOWN"
        healthy &= health in ("SERVING", "PONG")
        pid = f"pid {rec.pid}" if running else "not running"
        print(f"{rec.name:<16} {pid:<12} {health:<24} {rec.endpoint}  {rec.metrics}")
    return 0 if healthy else 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tori-fleet", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        settings = load_config()
    except ConfigError as exc:
        return _fail(str(exc))
    var_dir = resolve_path(settings.paths.var_dir)
    command = {"up": up, "down": down, "status": status}[args.command]
    return command(settings, var_dir)


if __name__ == "__main__":
    sys.exit(main())
