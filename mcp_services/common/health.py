"""Client side of the standard gRPC health service: probe one server, or wait for it."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout: float = 2.0) -> str:
    """The health status name (SERVING, NOT_SERVING, ...), or UNREACHABLE with the reason."""
    with grpc.insecure_channel(target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def wait_serving(
    target: str,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.1,
) -> bool:
    """Poll until the server reports SERVING (True), `alive()` turns False, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(target, timeout=min(1.0, max(0.1, deadline - time.monotonic()))) == "SERVING":
            return True
        if not alive():
            return False
        time.sleep(interval)
    return False


def main(argv: list[str] | None = None) -> int:
    """`python -m mcp_services.common.health HOST:PORT [SERVICE]`: exit 0 when SERVING (compose)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m mcp_services.common.health HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    status = check(args[0], args[1] if len(args) > 1 else "")
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
