"""Corrupt request bytes are INVALID_ARGUMENT naming the expected type, for every call kind."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from tests.conftest import SettingsFactory, scrape_until

CORRUPT = b"\x0a\xff\xff\xff"  # a length prefix far beyond the message


@pytest.fixture
def vault(make_settings: SettingsFactory) -> ServerThread:
    settings = make_settings(vault={"backend": "memory", "index": {"enabled": False}})
    return ServerThread("vault", "episodic_vault", VaultService, settings)


def test_every_call_kind_refuses_corrupt_bytes(vault: ServerThread) -> None:
    with vault as srv, grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}") as ch:
        base = "/tori.episodic.v1.EpisodicVault/"
        calls: dict[str, Callable[[], object]] = {
            "unary GetEpisode": lambda: ch.unary_unary(base + "GetEpisode")(CORRUPT, timeout=5),
            "client stream PutEpisodes": lambda: ch.stream_unary(base + "PutEpisodes")(
                iter([CORRUPT]), timeout=5
            ),
            "server stream Scan": lambda: list(ch.unary_stream(base + "Scan")(CORRUPT, timeout=5)),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "is not a valid tori.episodic.v1." in str(info.value.details()), name
        url = f"http://127.0.0.1:{srv.running.metrics_port}/metrics"
        needle = 'grpc_code="INVALID_ARGUMENT",grpc_method="GetEpisode"'
        assert needle in scrape_until(url, needle)
