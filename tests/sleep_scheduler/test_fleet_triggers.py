"""Triggers and the lease with real processes: a private Redis, a vault and two schedulers.

The schedulers share the graph directory and the Redis lease, as two replicas would. One test
walks through the done-when items in order, to start the processes once:
the trigger command, a schedule and vault pressure each start a cycle; two schedulers started
together never consolidate at the same time; killing one mid-cycle leaves the last committed
graph intact and the lease free within its expiry.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
import scipy.sparse as sp

from mcp_services.common.health import check
from mcp_services.fleet.redis_server import redis_argv, wait_ready
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.adapters.lease import LEASE_KEY
from mcp_services.sleep_scheduler.domain.planted import planted_pm1, planted_sparse
from tests.conftest import free_port, free_ports, service_environ

pytestmark = pytest.mark.fleet

LEASE_TTL_S = 3.0
SUCCEEDED = sleep_pb2.JOB_STATE_SUCCEEDED


def wait_for(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.1)


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        (tmp / "redis").mkdir(exist_ok=True)
        self.procs["redis"] = subprocess.Popen(
            redis_argv(port, tmp / "redis"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        assert wait_ready(self.redis_url, 15), "private redis did not start"
        self.base = service_environ(
            tmp / "var",
            REDIS_URL=self.redis_url,
            VAULT_BACKEND="memory",
            SLEEP_LEASE_TTL_S=str(LEASE_TTL_S),
            SLEEP_PRESSURE_THRESHOLD="0",
            SLEEP_PRESSURE_POLL_S="1",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
        )
        self.vault_target = f"127.0.0.1:{self.base['VAULT_GRPC_PORT']}"
        self._vault_channel = grpc.insecure_channel(self.vault_target)
        self.vault = episodic_pb2_grpc.EpisodicVaultStub(self._vault_channel)
        self.targets: dict[str, str] = {}
        self._channels: list[grpc.Channel] = [self._vault_channel]

    def spawn(self, name: str, module: str, **env: str) -> None:
        full = {**self.base, **env}
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module], env=full, stdout=log, stderr=subprocess.STDOUT
        )
        port = full["SLEEP_GRPC_PORT"] if "sleep" in module else full["VAULT_GRPC_PORT"]
        target = f"127.0.0.1:{port}"
        self.targets[name] = target
        wait_for(lambda: check(target, timeout=1) == "SERVING", 60, f"{name} to serve")

    def scheduler(self, name: str, pressure: int = 0) -> sleep_pb2_grpc.SleepSchedulerStub:
        grpc_port, metrics_port = free_ports(2)
        self.spawn(
            name,
            "mcp_services.sleep_scheduler.server",
            SLEEP_GRPC_PORT=str(grpc_port),
            SLEEP_METRICS_PORT=str(metrics_port),
            SLEEP_PRESSURE_THRESHOLD=str(pressure),
        )
        return self.stub(name)

    def stub(self, name: str) -> sleep_pb2_grpc.SleepSchedulerStub:
        channel = grpc.insecure_channel(self.targets[name])
        self._channels.append(channel)
        return sleep_pb2_grpc.SleepSchedulerStub(channel)

    def put(self, states: sp.csr_matrix, prefix: str) -> None:
        reqs = []
        for r in range(states.shape[0]):
            cols = states.indices[states.indptr[r] : states.indptr[r + 1]]
            ids = [f"{prefix}{c}" for c in cols]
            act = episodic_pb2.ConceptActivation(concept_ids=ids, strengths=[1.0] * len(ids))
            reqs.append(
                episodic_pb2.PutEpisodeRequest(
                    episode=episodic_pb2.Episode(
                        source=episodic_pb2.Source(type="t"), activation=act
                    )
                )
            )
        self.vault.PutEpisodes(iter(reqs))

    def unconsolidated(self) -> int:
        return int(self.vault.GetStats(episodic_pb2.GetStatsRequest()).unconsolidated_count)

    def close(self) -> None:
        for c in self._channels:
            c.close()
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            del name


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        f.spawn("vault", "mcp_services.episodic_vault.server")
        yield f
    finally:
        f.close()


def latest_job(stub: sleep_pb2_grpc.SleepSchedulerStub) -> sleep_pb2.ConsolidationJob:
    job: sleep_pb2.ConsolidationJob = stub.GetConsolidationStatus(
        sleep_pb2.GetConsolidationStatusRequest()
    )
    return job


def graph_version(stub: sleep_pb2_grpc.SleepSchedulerStub) -> int:
    return int(stub.GetGraphStats(sleep_pb2.GetGraphStatsRequest()).header.version)


def intervals(stub: sleep_pb2_grpc.SleepSchedulerStub) -> list[tuple[int, int, str]]:
    stats = stub.GetReplayStats(sleep_pb2.GetReplayStatsRequest())
    return [
        (j.started_at.ToMilliseconds(), j.finished_at.ToMilliseconds(), j.job_id)
        for j in stats.recent
        if j.episodes_processed > 0
    ]


def test_triggers_lease_and_kill_mid_cycle(fleet: Fleet) -> None:
    """Trigger command, schedule and pressure each start a cycle; replicas never overlap; a
    replica killed mid-cycle leaves the committed graph intact and the lease free in time."""
    a = fleet.scheduler("sched-a", pressure=150)
    b = fleet.scheduler("sched-b")
    sparse = planted_sparse(400, 80, seed=4).episodes  # 400 episodes

    # 1. The trigger command.
    fleet.put(sparse[:100], "s:")
    run = subprocess.run(
        [sys.executable, "-m", "mcp_services.sleep_scheduler.trigger", "--once"],
        env={**fleet.base, "SLEEP_GRPC_PORT": fleet.targets["sched-a"].rsplit(":", 1)[1]},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["state"] == "JOB_STATE_SUCCEEDED" and out["episodes_processed"] == 100
    assert out["trigger"] == "trigger" and fleet.unconsolidated() == 0

    # 2. A schedule on the other replica.
    b.ScheduleConsolidation(sleep_pb2.ScheduleConsolidationRequest(every_s=0.5))
    fleet.put(sparse[100:150], "s:")
    wait_for(lambda: fleet.unconsolidated() == 0, 60, "the scheduled cycle")
    wait_for(lambda: latest_job(b).state == SUCCEEDED, 30, "the scheduled job to finish")
    assert latest_job(b).trigger == "schedule"
    b.ScheduleConsolidation(sleep_pb2.ScheduleConsolidationRequest(clear=True))

    # 3. Vault pressure (threshold 150 on replica a).
    fleet.put(sparse[150:], "s:")
    wait_for(lambda: fleet.unconsolidated() == 0, 60, "the pressure cycle")
    wait_for(lambda: latest_job(a).trigger == "pressure", 30, "the pressure job")
    wait_for(lambda: latest_job(a).state == SUCCEEDED, 30, "the pressure job to finish")

    # 4. Both replicas asked at once: one runs, the other is refused; nothing ever overlaps.
    dense = planted_pm1(200, 60, seed=3).episodes
    fleet.put(dense, "d:")
    codes = []
    for stub in (a, b):
        try:
            stub.StartConsolidation(sleep_pb2.StartConsolidationRequest(trigger="race"), timeout=30)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
    assert sorted(codes) == ["ABORTED", "OK"] or codes.count("ABORTED") == 2, codes
    wait_for(lambda: fleet.unconsolidated() == 0, 120, "the race cycle")
    wait_for(lambda: all(latest_job(s).state >= SUCCEEDED for s in (a, b)), 60, "jobs to finish")
    jobs = sorted(intervals(a) + intervals(b))
    assert len(jobs) >= 4
    for (_s1, f1, j1), (s2, _f2, j2) in itertools.pairwise(jobs):
        assert f1 <= s2, f"jobs {j1} and {j2} overlapped"

    # 5. Kill replica b mid-cycle (a's pressure trigger off, so only b works).
    a.UpdateConfig(
        sleep_pb2.UpdateConfigRequest(
            config=sleep_pb2.SchedulerConfig(pressure_threshold=0), fields=["pressure_threshold"]
        )
    )
    before = graph_version(a)
    fleet.put(planted_pm1(200, 60, seed=9).episodes, "k:")
    job = b.StartConsolidation(sleep_pb2.StartConsolidationRequest(trigger="doomed"))
    wait_for(lambda: latest_job(b).phase == "sleeping", 60, "replica b to be mid-cycle")
    assert redis.Redis.from_url(fleet.redis_url).get(LEASE_KEY) is not None
    killed_at = time.monotonic()
    os.kill(fleet.procs["sched-b"].pid, signal.SIGKILL)
    fleet.procs["sched-b"].wait(10)
    assert job.job_id
    r = redis.Redis.from_url(fleet.redis_url)
    wait_for(lambda: r.get(LEASE_KEY) is None, LEASE_TTL_S + 2, "the lease to expire")
    assert time.monotonic() - killed_at <= LEASE_TTL_S + 2
    assert graph_version(a) == before
    read = list(a.ReadGraph(sleep_pb2.ReadGraphRequest()))
    assert read[0].header.version == before
    assert fleet.unconsolidated() == 300
    done = a.StartConsolidation(sleep_pb2.StartConsolidationRequest(wait=True), timeout=300)
    assert done.state == SUCCEEDED and done.base_version == before
    assert done.graph_version == before + 1 and fleet.unconsolidated() == 0
