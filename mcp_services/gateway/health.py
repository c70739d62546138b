"""Probe the gateway's /healthz (it has no gRPC health service): for the fleet and compose."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from mcp_services.common.clients import reachable_host
from mcp_services.gateway.settings import GatewayConfig


def healthz_url(cfg: GatewayConfig) -> str:
    return f"http://{reachable_host(cfg.host)}:{cfg.port}/healthz"


def check(url: str, timeout: float = 2.0) -> str:
    """SERVING when /healthz answers ok, else UNREACHABLE with the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.loads(resp.read().decode() or "{}")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return f"UNREACHABLE ({reason})"
    return "SERVING" if body.get("status") == "ok" else "NOT_SERVING"


def wait_serving(
    url: str, timeout: float, alive: Callable[[], bool] = lambda: True, interval: float = 0.1
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(url, timeout=min(1.0, max(0.1, deadline - time.monotonic()))) == "SERVING":
            return True
        if not alive():
            return False
        time.sleep(interval)
    return False


def main(argv: list[str] | None = None) -> int:
    """`python -m mcp_services.gateway.health [URL]`: exit 0 when the gateway serves (compose)."""
    import sys

    from mcp_services.common.config import load_config

    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else healthz_url(load_config().gateway)
    status = check(url)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
