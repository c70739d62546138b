"""A real SleepScheduler server on free ports, per test, and a client for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread
from mcp_services.gen.tori.sleep.v1 import sleep_pb2_grpc
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from tests.conftest import SettingsFactory


@dataclass
class Scheduler:
    server: ServerThread
    stub: sleep_pb2_grpc.SleepSchedulerStub
    channel: grpc.Channel
    settings: Settings

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.running.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.running.metrics_port}/metrics"


SchedulerFactory = Callable[..., Scheduler]


@pytest.fixture
def start_scheduler(make_settings: SettingsFactory) -> Iterator[SchedulerFactory]:
    """Start a scheduler with the given config overrides (e.g. sleep_scheduler={...})."""
    started: list[Scheduler] = []

    def factory(settings: Settings | None = None, **overrides: Any) -> Scheduler:
        settings = settings or make_settings(**overrides)
        server = ServerThread(
            "sleep-scheduler", "sleep_scheduler", SleepSchedulerService, settings
        ).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.running.grpc_port}")
        sched = Scheduler(server, sleep_pb2_grpc.SleepSchedulerStub(channel), channel, settings)
        started.append(sched)
        return sched

    yield factory
    for s in started:
        s.channel.close()
        s.server.stop()


@pytest.fixture
def scheduler(start_scheduler: SchedulerFactory) -> Scheduler:
    return start_scheduler()
