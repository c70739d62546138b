"""memory.kcl_status shows periods: each named stream's leading periods in its own time unit, and
a stream's modes with period, persistence and significance (a real learner behind a real
gateway, driven by the SDK's client over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mcp_services.common.config import load_config
from mcp_services.common.server import ServerThread
from mcp_services.gateway.app import GatewayThread
from mcp_services.gen.tori.koopman.v1 import koopman_pb2_grpc
from mcp_services.koopman_learner.rpc.series import series_request as request
from mcp_services.koopman_learner.rpc.series import tones
from mcp_services.koopman_learner.server import KoopmanLearnerService
from tests.conftest import free_ports, service_environ
from tests.gateway.conftest import KEY_A, mcp_session, text


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[GatewayThread, koopman_pb2_grpc.KoopmanLearnerStub]]:
    http, metrics = free_ports(2)
    env = service_environ(tmp_path / "var") | {
        "GATEWAY_PORT": str(http),
        "GATEWAY_METRICS_PORT": str(metrics),
        "GATEWAY_API_KEYS": KEY_A,
        "KCL_FOLLOW_VAULT": "false",
    }
    settings = load_config(environ=env)
    learner = ServerThread("koopman-learner", "koopman_learner", KoopmanLearnerService, settings)
    learner.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{learner.running.grpc_port}")
    gw = GatewayThread(settings).start()
    try:
        yield gw, koopman_pb2_grpc.KoopmanLearnerStub(channel)
    finally:
        gw.stop()
        channel.close()
        learner.stop()


def _status(url: str, args: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with mcp_session(url, KEY_A) as client:
            r = await client.call_tool("memory.kcl_status", args)
            assert not r.is_error, text(r)
            assert r.structured_content is not None
            return dict(r.structured_content)

    return asyncio.run(go())


def test_kcl_status_lists_streams_and_their_periods(
    gateway: tuple[GatewayThread, koopman_pb2_grpc.KoopmanLearnerStub],
) -> None:
    """After a 12-and-31-sample two-tone stream sampled daily: the streams list names it with
    unit "d" and leading period 12 or 31; asked for that stream, the modes carry the periods in
    days, most significant first, each with its persistence and significance."""
    gw, stub = gateway
    series = tones((12.0, 31.0), sigma=0.02, seed=0)
    stub.ProcessActivationBatch(
        request("daily", "x", series.times, series.values, time_unit="d"), timeout=60
    )
    out = _status(gw.url, {"modes": 3})
    (daily,) = [s for s in out["streams"] if s["stream"] == "daily"]
    assert daily["timeUnit"] == "d" and daily["delays"] >= 2
    assert min(abs(daily["periods"][0]["period"] - p) for p in (12, 31)) < 0.12
    out = _status(gw.url, {"modes": 3, "stream": "daily"})
    assert out["timeUnit"] == "d"
    modes = [m for m in out["modes"] if m["period"] > 0]
    assert sorted(round(m["period"]) for m in modes[:2]) == [12, 31]
    significance = [m["significance"] for m in out["modes"]]
    assert significance == sorted(significance, reverse=True)
    assert all(0 < m["persistence"] <= 1 for m in out["modes"])
