"""The SleepScheduler killed mid-commit: the graph stays at a consistent version.

A real scheduler process takes CommitGraph calls in a loop (each against the latest version, as
the pruner does) with graphs large enough that receiving, validating and fsyncing one takes a
good part of a second; it is killed with SIGKILL at random moments, ten times, and restarted.
Version v's graph is a deterministic function of v, so after every restart each retained version
can be compared with exactly what was committed as v. Checked after each restart: every
acknowledged commit is there (the latest version is at least the last acknowledged one), at most
the one commit in flight at the kill landed besides them, every retained version is exactly the
graph committed as it (no torn or mixed version), the temporary file of an interrupted write is
gone, and `tori-ops verify-consistency --services` finds the graph store consistent.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.common.health import wait_serving
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.domain.concept_index import ConceptIndex
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph
from mcp_services.sleep_scheduler.rpc.codec import commit_chunks, stored_of_chunks
from tests.conftest import service_environ
from tests.faults.test_vault_faults import Proc
from tests.ops.runner import ops

pytestmark = pytest.mark.fleet

KILLS = 10
BASE_CONCEPTS = 2000
EDGES = 150_000  # ~3.6 MB a version: a commit spends real time streaming, checking and fsyncing


def graph_for(version: int) -> ConceptGraph:
    """The graph committed as `version`: the concept index grows by one concept per version (a
    concept keeps its position), the weights and biases are drawn from the version number."""
    n = BASE_CONCEPTS + version
    rng = np.random.default_rng(version)
    i, j = rng.integers(0, n, EDGES), rng.integers(0, n, EDGES)
    keep = i < j
    upper = sp.coo_matrix((rng.uniform(0.1, 1.0, int(keep.sum())), (i[keep], j[keep])), (n, n))
    upper.sum_duplicates()
    w = sp.csr_matrix(upper + upper.T)
    w.sort_indices()
    index = ConceptIndex(tuple(f"concept:{k}" for k in range(n)))
    return ConceptGraph(index, w, rng.normal(0, 0.1, n))


def same_graph(a: ConceptGraph, b: ConceptGraph) -> bool:
    return (
        a.index.ids == b.index.ids
        and np.array_equal(a.biases, b.biases)
        and a.weights.shape == b.weights.shape
        and abs(a.weights - b.weights).max() == 0
    )


@dataclass
class Tally:
    acknowledged: list[int] = field(default_factory=list)
    in_flight_landed: int = 0
    in_flight_lost: int = 0
    interrupted_writes_seen: int = 0
    versions_checked: int = 0
    mid_write: list[bool] = field(default_factory=list)  # per timed kill: caught a write
    lives: list[int] = field(default_factory=list)  # commits acknowledged per process life


class Committer:
    """Commits graph_for(latest + 1) against latest until the server goes away."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = sleep_pb2_grpc.SleepSchedulerStub(self.channel)

    def versions(self) -> list[int]:
        listed = self.stub.ListGraphVersions(sleep_pb2.ListGraphVersionsRequest(), timeout=30)
        return sorted(v.header.version for v in listed.versions)

    def read(self, version: int) -> ConceptGraph:
        req = sleep_pb2.ReadGraphRequest(version=version)
        return stored_of_chunks(self.stub.ReadGraph(req, timeout=60)).graph

    def commit_until_killed(self, latest: int, tally: Tally) -> int:
        """Commit until the server dies; the version that was in flight then."""
        acked = 0
        while True:
            chunks = commit_chunks(latest, graph_for(latest + 1), author="fault-test")
            try:
                reply = self.stub.CommitGraph(iter(chunks), timeout=60)
            except grpc.RpcError as exc:
                died = exc
                break
            assert reply.header.version == latest + 1
            tally.acknowledged.append(reply.header.version)
            latest = reply.header.version
            acked += 1
        assert died.code() == grpc.StatusCode.UNAVAILABLE, died
        tally.lives.append(acked)
        return latest + 1

    def close(self) -> None:
        self.channel.close()


def start_scheduler(env: dict[str, str], log: Path) -> Proc:
    proc = Proc([sys.executable, "-m", "mcp_services.sleep_scheduler.server"], env, log).start()
    alive = lambda: proc.proc is not None and proc.proc.poll() is None  # noqa: E731
    assert wait_serving(f"127.0.0.1:{env['SLEEP_GRPC_PORT']}", 90, alive), proc.tail()
    return proc


def check_store(c: Committer, graphs: Path, tally: Tally, in_flight: int | None) -> int:
    """Every rule of the module docstring after a restart; the latest version."""
    versions = c.versions()
    latest = versions[-1] if versions else 0
    last_acked = tally.acknowledged[-1] if tally.acknowledged else 0
    assert latest >= last_acked, f"acknowledged version {last_acked} lost (latest {latest})"
    assert latest <= max(last_acked, in_flight or 0), f"version {latest} was never committed"
    if in_flight is not None and in_flight > last_acked:
        if latest == in_flight:
            tally.in_flight_landed += 1
        else:
            tally.in_flight_lost += 1
    if versions:
        assert versions == list(range(versions[0], latest + 1)), f"a gap in {versions}"
    for v in versions:
        assert same_graph(c.read(v), graph_for(v)), f"version {v} is not the graph committed"
        tally.versions_checked += 1
    assert not list(graphs.glob(".tmp-*")), "an interrupted write's temporary file survived"
    return latest


def kill_when_writing(pid: int, graphs: Path, after: float, tally: Tally) -> None:
    """After `after` seconds, SIGKILL `pid` as soon as a version's temporary file exists
    (between the store's mkstemp and its rename: mid-write), or 30 s later regardless."""
    time.sleep(after)
    deadline = time.monotonic() + 30
    caught = False
    while time.monotonic() < deadline:
        if any(e.name.startswith(".tmp-") for e in os.scandir(graphs)):
            caught = True
            break
        time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)
    tally.mid_write.append(caught)


def test_killed_mid_commit_the_graph_stays_at_a_committed_version(
    tmp_path: Path, redis_url: str
) -> None:
    env = service_environ(tmp_path / "var", REDIS_URL=redis_url, SLEEP_PRESSURE_THRESHOLD="0")
    graphs = tmp_path / "var" / "graphs"
    log = tmp_path / "scheduler.log"
    rng = random.Random(8)
    tally = Tally()
    in_flight: int | None = None
    latest = 0
    for kill in range(KILLS):
        sched = start_scheduler(env, log)
        assert sched.proc is not None
        c = Committer(f"127.0.0.1:{env['SLEEP_GRPC_PORT']}")
        try:
            latest = check_store(c, graphs, tally, in_flight)
            # Even kills land at a random moment (streaming, checking or writing a commit), odd
            # ones while a version file is being written.
            pid, after = sched.proc.pid, rng.uniform(0.3, 2.5)
            killer: threading.Thread
            if kill % 2 == 0:
                killer = threading.Timer(after, os.kill, (pid, signal.SIGKILL))
            else:
                args = (pid, graphs, after / 2, tally)
                killer = threading.Thread(target=kill_when_writing, args=args)
            killer.start()
            in_flight = c.commit_until_killed(latest, tally)
            killer.join()
            sched.wait()
            if list(graphs.glob(".tmp-*")):
                tally.interrupted_writes_seen += 1
        finally:
            c.close()
            sched.stop()
    sched = start_scheduler(env, log)
    c = Committer(f"127.0.0.1:{env['SLEEP_GRPC_PORT']}")
    try:
        latest = check_store(c, graphs, tally, in_flight)
    finally:
        c.close()
        sched.signal(signal.SIGTERM)
        assert sched.wait() == 0, sched.tail()
    verify = ops(env, "verify-consistency", "--services")
    print(
        f"scheduler kill -9 x{KILLS}: {len(tally.acknowledged)} commits acknowledged "
        f"(per life {tally.lives}), all read back; kills timed to a version write: "
        f"{sum(tally.mid_write)} of {len(tally.mid_write)} caught one; "
        f"{tally.interrupted_writes_seen} kills left a half-written temporary file; "
        f"commit in flight at the kill: {tally.in_flight_landed} landed, "
        f"{tally.in_flight_lost} did not; {tally.versions_checked} retained versions compared "
        f"with what was committed; final version {latest}"
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"versions {max(1, latest - 9)}..{latest}" in verify.stdout
    assert len(tally.acknowledged) >= KILLS  # the loop really committed between kills
    assert tally.interrupted_writes_seen >= 1  # at least one kill did land mid-write
