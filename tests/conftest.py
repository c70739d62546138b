"""Shared fixtures: configuration for tests, a private real Redis, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mcp_services.common.config import load_config
from mcp_services.common.config_schema import LoggingConfig, Settings
from mcp_services.common.logging import configure_logging
from mcp_services.fleet.redis_server import redis_argv, wait_ready


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    """In-process servers log warnings and errors only, to stderr, as the test overlay says."""
    configure_logging(LoggingConfig(level="warning"), "test")


def free_ports(n: int) -> list[int]:
    """n distinct free ports: all sockets stay bound until every port is chosen, so the OS cannot
    hand the same port out twice (as n separate free_port() calls can)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; a race with other processes is
    possible but harmless for tests that fail loudly on a taken port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT_VARS = (
    "VAULT_GRPC_PORT", "VAULT_METRICS_PORT", "SLEEP_GRPC_PORT", "SLEEP_METRICS_PORT",
    "PRUNER_GRPC_PORT", "PRUNER_METRICS_PORT", "KOOPMAN_GRPC_PORT", "KOOPMAN_METRICS_PORT",
    "FLEET_REDIS_PORT", "GATEWAY_PORT", "GATEWAY_METRICS_PORT",
)  # fmt: skip


def service_environ(var_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a test's services: the test overlay, its own var dir, free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORI_", "VAULT_", "REDIS_"))}
    env.update({"TORI_ENV": "test", "TORI_VAR_DIR": str(var_dir)})
    env.update(
        {var: str(port) for var, port in zip(PORT_VARS, free_ports(len(PORT_VARS)), strict=True)}
    )
    env.update(extra)
    return env


SettingsFactory = Callable[..., Settings]


def scrape_until(url: str, needle: str, within: float = 5.0) -> str:
    """The metrics page once it contains `needle` (or at the deadline). An aborted call's status
    reaches the client before the server's interceptor has counted it, so tests poll."""
    deadline = time.monotonic() + within
    while True:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = str(resp.read().decode())
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for the test overlay with free ports and data under tmp_path.

    Keyword arguments are nested overrides, e.g. vault={"backend": "memory"}.
    """

    def factory(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = service_environ(tmp_path / "var")
        env.update(environ or {})
        return load_config(environ=env, overrides=overrides)

    return factory


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, private Redis server for the session (the same binary the fleet uses)."""
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        redis_argv(port, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        if not wait_ready(url, 15):
            pytest.fail(f"private redis-server on port {port} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
