"""memory.prune refusals speak the tool caller's language (issue 15).

A fleet of real services (vault, scheduler, pruner, Redis for the consolidation event) behind the
gateway, driven by the SDK's client over HTTP. Right after memory.sleep the pruner runs the job
that every consolidation starts by itself; a memory.prune meanwhile is refused with that cause,
the running job's id and what to do with memory.prune, never with the pruner's gRPC method names
or the generic "send less per call" advice. Tau appears in the units the caller set.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_services.common.config import load_config
from mcp_services.common.server import Context, ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gateway.app import GatewayThread
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner.engine import PruningEngine
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.conftest import free_ports, service_environ
from tests.gateway.conftest import KEY_A, mcp_session, text

# Words a tool caller cannot act on: the pruner's RPCs and the generic size advice.
GRPC_WORDS = ("GetPruningStatus", "CancelPruning", "TriggerPruning", "job_id", "options.")
GENERIC = ("send less per call", "raise the limit")
SCENES = [[f"concept:scene{g}-{j}" for j in range(5)] for g in range(4)]


@dataclass
class PruneFleet:
    gateway: GatewayThread
    pruners: list[SparsePrunerService] = field(default_factory=list)

    @property
    def engine(self) -> PruningEngine:
        return self.pruners[0].engine

    def hold_numerics(self) -> threading.Event:
        """Occupy the pruner's single numerics thread until the returned event is set, so a job
        that starts meanwhile stays RUNNING for as long as the test needs it to."""
        gate = threading.Event()
        self.engine._executor.submit(gate.wait, 60.0)
        return gate

    def wait_active(self, trigger: str, within: float = 60.0) -> str:
        deadline = time.monotonic() + within
        while (job := self.engine.active) is None or job.trigger != trigger:
            assert time.monotonic() < deadline, f"no {trigger} pruning job started"
            time.sleep(0.02)
        return job.job_id


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[PruneFleet]:
    http, metrics = free_ports(2)
    env = service_environ(tmp_path / "var") | {
        "GATEWAY_PORT": str(http),
        "GATEWAY_METRICS_PORT": str(metrics),
        "GATEWAY_API_KEYS": KEY_A,
    }
    settings = load_config(
        environ=env,
        overrides={"vault": {"backend": "memory", "embedding_dim": 8}, "redis": {"url": redis_url}},
    )
    pruners: list[SparsePrunerService] = []

    def pruner(ctx: Context) -> SparsePrunerService:
        service = SparsePrunerService(ctx)
        pruners.append(service)
        return service

    started: list[Any] = []
    try:
        for name, key, factory in (
            ("episodic-vault", "episodic_vault", VaultService),
            ("sleep-scheduler", "sleep_scheduler", SleepSchedulerService),
            ("sparse-pruner", "sparse_pruner", pruner),
        ):
            started.append(ServerThread(name, key, factory, settings).start())
        gw = GatewayThread(settings).start()
        started.append(gw)
        yield PruneFleet(gw, pruners)
    finally:
        for s in reversed(started):
            s.stop()


def episodes(count: int) -> list[dict[str, Any]]:
    """Episode i shows scene i % 4 (all five of its concepts) plus one concept of the next."""
    out = []
    for i in range(count):
        concepts = {c: 0.9 for c in SCENES[i % 4]}
        concepts[SCENES[(i + 1) % 4][i % 5]] = 0.7
        out.append({"id": f"scene-{i:03d}", "concepts": concepts, "tags": ["scenes"]})
    return out


async def put_and_sleep(client: Client) -> None:
    r = await client.call_tool("memory.put", {"episodes": episodes(40)})
    assert not r.is_error, text(r)
    r = await client.call_tool("memory.sleep", {"once": True})
    assert not r.is_error, text(r)
    assert r.structured_content is not None
    assert r.structured_content["job"]["state"] == "SUCCEEDED", r.structured_content


async def wait_finished(client: Client, job_id: str, within: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        r = await client.call_tool("memory.prune", {"jobId": job_id})
        assert not r.is_error, text(r)
        assert r.structured_content is not None
        job: dict[str, Any] = r.structured_content["job"]
        if job["state"] not in ("PENDING", "RUNNING"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
        await asyncio.sleep(0.1)


class TestBusyRefusal:
    """memory.prune right after memory.sleep names the automatic job and what to do."""

    def test_refusal_after_sleep_names_the_automatic_prune(self, fleet: PruneFleet) -> None:
        """The automatic job started by the consolidation is running: memory.prune is refused
        with that cause, its jobId and the memory.prune call that follows it; no gRPC names,
        no 'send less'. Once it finishes, memory.prune with that jobId reports it."""
        gate = fleet.hold_numerics()

        async def go() -> tuple[str, str, dict[str, Any], bool]:
            async with mcp_session(fleet.gateway.url, KEY_A) as client:
                await put_and_sleep(client)
                running = fleet.wait_active("consolidation")
                r = await client.call_tool("memory.prune", {})
                refused, message = r.is_error, text(r)
                gate.set()
                job = await wait_finished(client, running)
                return running, message, job, refused

        try:
            running, message, job, refused = asyncio.run(go())
        finally:
            gate.set()
        assert refused, message
        assert "started automatically after the last consolidation" in message
        assert f"jobId {running}" in message and "memory.prune with that jobId" in message
        assert "retry in a few seconds" in message
        for words in GRPC_WORDS + GENERIC:
            assert words not in message, (words, message)
        assert job["jobId"] == running and job["state"] in ("SUCCEEDED", "REFUSED")

    def test_unknown_job_id_names_the_argument(self, fleet: PruneFleet) -> None:
        """memory.prune with a jobId the pruner never made names `jobId`, not the proto's
        job_id, and says where a valid one comes from."""

        async def go() -> tuple[bool, str]:
            async with mcp_session(fleet.gateway.url, KEY_A) as client:
                r = await client.call_tool("memory.prune", {"jobId": "01NOSUCHJOB"})
                return r.is_error, text(r)

        is_error, message = asyncio.run(go())
        assert is_error
        assert "`jobId`" in message and "no pruning job '01NOSUCHJOB'" in message
        for words in GRPC_WORDS:
            assert words not in message, (words, message)


class TestTauUnits:
    """Tau is reported and refused in the units a memory.prune caller sets."""

    def test_the_message_and_tau_used_agree(self, fleet: PruneFleet) -> None:
        """A run asked for tau 0.002 reports tauUsed in those units, and the tau its message
        states is that same figure; a tau above the pruner's ceiling is refused by name."""

        async def go() -> tuple[dict[str, Any], bool, str]:
            async with mcp_session(fleet.gateway.url, KEY_A) as client:
                await put_and_sleep(client)
                await wait_finished(client, fleet.wait_active("consolidation"))
                r = await client.call_tool("memory.prune", {"tau": 0.002, "dryRun": True})
                assert not r.is_error, text(r)
                assert r.structured_content is not None
                job: dict[str, Any] = r.structured_content["job"]
                bad = await client.call_tool("memory.prune", {"tau": 0.5})
                return job, bad.is_error, text(bad)

        job, bad_refused, bad_message = asyncio.run(go())
        assert job["state"] in ("SUCCEEDED", "REFUSED"), job
        assert 0.0 < job["tauUsed"] <= 0.002
        stated = re.findall(r"tau (?:backed off from [\d.e-]+ to )?([\d.e-]+)\)?", job["message"])
        assert stated and float(stated[-1]) == pytest.approx(job["tauUsed"], rel=1e-2), job
        assert "qualityStderr" in job and job["qualityStderr"] >= 0.0
        assert bad_refused and "`tau`" in bad_message and "0.01" in bad_message
        assert "options.tau" not in bad_message
