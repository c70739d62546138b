"""CommitGraph streams are bounded like the vault's PutEpisodes (issue 16): bytes per stream
(sleep_scheduler.max_stream_bytes) and streams open at once (max_concurrent_streams); a refused
commit changes no version and the scheduler keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.rpc.codec import commit_chunks
from tests.sleep_scheduler.conftest import SchedulerFactory
from tests.sleep_scheduler.test_graph_service import commit, latest, random_graph, two_assemblies


class TestCommitStreamBounds:
    def test_commit_over_the_byte_budget_is_refused(
        self, start_scheduler: SchedulerFactory
    ) -> None:
        """A commit streaming more than max_stream_bytes is RESOURCE_EXHAUSTED naming the key
        and its value; the version stays, and a small commit then succeeds."""
        sched = start_scheduler(sleep_scheduler={"max_stream_bytes": 4096})
        before = latest(sched)
        with pytest.raises(grpc.RpcError) as err:
            commit(sched, before, random_graph(80, seed=1, density=0.5), chunk_edges=100)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "sleep_scheduler.max_stream_bytes = 4096" in (err.value.details() or "")
        assert latest(sched) == before
        graph, protos = two_assemblies()
        assert commit(sched, before, graph, protos).header.version == before + 1

    def test_one_stream_over_the_cap_is_refused(self, start_scheduler: SchedulerFactory) -> None:
        """With max_concurrent_streams commits open, one more, in any namespace, is
        RESOURCE_EXHAUSTED naming the key; the held commit then completes."""
        sched = start_scheduler(sleep_scheduler={"max_concurrent_streams": 1})
        base = latest(sched)
        # The cap is per service: the probing calls come from another namespace.
        other = (("x-tori-namespace", "acme"),)
        graph, protos = two_assemblies()
        chunks = commit_chunks(base, graph, protos, None, "test", "held", 7)
        release = threading.Event()

        def held() -> Iterator[sleep_pb2.GraphChunk]:
            yield chunks[0]
            release.wait(60)
            yield from chunks[1:]

        first = sched.stub.CommitGraph.future(held(), timeout=60)
        try:
            # An empty commit changes nothing (INVALID_ARGUMENT while a slot is free): repeat it
            # until the held commit has taken the only slot.
            refused: grpc.RpcError | None = None
            for _ in range(400):
                with pytest.raises(grpc.RpcError) as err:
                    sched.stub.CommitGraph(iter([]), metadata=other, timeout=10)
                if err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused = err.value
                    break
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
                time.sleep(0.05)
            assert refused is not None, "the held commit never took the slot"
            assert "sleep_scheduler.max_concurrent_streams = 1" in (refused.details() or "")
        finally:
            release.set()
        assert first.result(timeout=60).header.version == base + 1
