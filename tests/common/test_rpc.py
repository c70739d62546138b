"""common/rpc.py over a real grpc.aio server: an error map's codes for unary and streaming RPCs.

The servicer is the SleepScheduler's generated base (a unary, a server-streaming and a
client-streaming RPC) with methods that raise what the request's version selects.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import NoReturn

import grpc
import pytest
from structlog.testing import capture_logs

from mcp_services.common.errors import InputError
from mcp_services.common.rpc import ErrorMap, Status, abort, errors
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc


class Conflict(Exception):
    pass


class Gone(Conflict):
    """A subclass mapped apart from its base: the most specific class wins."""


class BadVersion(InputError):
    pass


ERRORS = ErrorMap(
    {
        Conflict: Status(grpc.StatusCode.FAILED_PRECONDITION, "{exc}; read again"),
        Gone: grpc.StatusCode.NOT_FOUND,
        BadVersion: grpc.StatusCode.OUT_OF_RANGE,
    }
)
SECRET_URL = "redis://user:hunter2@db:6379"


async def fail(version: int, context: grpc.aio.ServicerContext) -> None:
    """Raise (or abort) as `version` says; 0 does nothing."""
    if version == 1:
        raise Conflict("base 3 is stale")
    if version == 2:
        raise Gone("version 9 is not retained")
    if version == 3:
        raise InputError("version: 3 is reserved; send another")
    if version == 4:
        raise BadVersion("version: out of range")
    if version == 5:
        raise ValueError(f"operands could not be broadcast together ({SECRET_URL})")
    if version == 6:
        await abort(context, grpc.StatusCode.PERMISSION_DENIED, "not yours")
    if version == 7:
        raise KeyError("a bug")


@ERRORS.servicer
class Failing(sleep_pb2_grpc.SleepSchedulerServicer):
    async def Complete(
        self, request: sleep_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.CompleteResponse:
        await fail(request.version, context)
        return sleep_pb2.CompleteResponse(version=request.version)

    @errors({Conflict: grpc.StatusCode.ABORTED})
    async def GetGraphStats(
        self, request: sleep_pb2.GetGraphStatsRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.GraphStats:
        await fail(request.version, context)
        return sleep_pb2.GraphStats()

    async def ReadGraph(
        self, request: sleep_pb2.ReadGraphRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sleep_pb2.GraphChunk]:
        yield sleep_pb2.GraphChunk(concept_ids=["first"])
        await fail(request.version, context)
        yield sleep_pb2.GraphChunk(concept_ids=["second"])

    async def CommitGraph(
        self,
        request_iterator: AsyncIterator[sleep_pb2.GraphChunk],
        context: grpc.aio.ServicerContext,
    ) -> sleep_pb2.CommitGraphResponse:
        async for chunk in request_iterator:
            await fail(chunk.header.base_version, context)
        return sleep_pb2.CommitGraphResponse()

    async def _helper(self) -> NoReturn:
        raise AssertionError("private methods are not RPCs and are left as they are")


@pytest.fixture(scope="module")
def stub() -> Iterator[sleep_pb2_grpc.SleepSchedulerStub]:
    ready, stop = threading.Event(), threading.Event()
    box: list[int] = []

    async def main() -> None:
        server = grpc.aio.server()
        # The RPCs Failing leaves out answer UNIMPLEMENTED (the generated base is abstract to mypy).
        servicer = Failing()  # type: ignore[abstract]
        sleep_pb2_grpc.add_SleepSchedulerServicer_to_server(servicer, server)
        box.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await server.stop(0)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    with grpc.insecure_channel(f"127.0.0.1:{box[0]}") as channel:
        yield sleep_pb2_grpc.SleepSchedulerStub(channel)
    stop.set()
    thread.join(10)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    """The error `call` (a whole RPC) ends with."""
    with pytest.raises(grpc.RpcError) as excinfo:
        call()
    return excinfo.value


def complete(stub: sleep_pb2_grpc.SleepSchedulerStub, version: int) -> grpc.RpcError:
    return refused(lambda: stub.Complete(sleep_pb2.CompleteRequest(version=version)))


ERROR_ID = re.compile(r"internal error ([0-9a-f]{8}) \((\w+)\)")


class TestUnary:
    def test_a_mapped_exception_gives_its_code_and_templated_message(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """Conflict is FAILED_PRECONDITION with the rule's message around the exception's."""
        err = complete(stub, 1)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == "base 3 is stale; read again"

    def test_the_most_specific_mapped_class_wins(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """Gone (a Conflict mapped on its own) is NOT_FOUND, not its base's FAILED_PRECONDITION."""
        err = complete(stub, 2)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == "version 9 is not retained"

    def test_an_input_error_is_invalid_argument_with_its_message(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """InputError needs no rule: INVALID_ARGUMENT, its message (naming the field) as sent."""
        err = complete(stub, 3)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "version: 3 is reserved; send another"

    def test_a_mapped_input_error_subclass_takes_its_rule(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """An InputError subclass the map names gets the map's code."""
        assert complete(stub, 4).code() == grpc.StatusCode.OUT_OF_RANGE

    def test_an_unmapped_exception_is_internal_with_an_id_in_the_log(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """A ValueError nobody mapped is the service's fault: INTERNAL (never INVALID_ARGUMENT),
        its message an error id that names the logged line with the traceback, password masked."""
        with capture_logs() as logs:
            err = complete(stub, 5)
        assert err.code() == grpc.StatusCode.INTERNAL
        found = ERROR_ID.search(err.details())
        assert found is not None, err.details()
        assert found.group(2) == "ValueError"
        assert "broadcast" not in err.details()  # the cause stays in the log
        lines = [e for e in logs if e.get("error_id") == found.group(1)]
        assert len(lines) == 1, logs
        line = lines[0]
        assert line["event"] == "rpc_internal_error" and line["log_level"] == "error"
        assert line["rpc"] == "Failing.Complete"
        assert "Traceback" in line["exception"] and "could not be broadcast" in line["exception"]
        assert "hunter2" not in line["exception"] and "user:***@db" in line["exception"]

    def test_each_internal_error_gets_its_own_id(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """Two failures are two ids (a KeyError too is INTERNAL)."""
        found = [ERROR_ID.search(complete(stub, 7).details()) for _ in range(2)]
        assert found[0] is not None and found[1] is not None
        assert found[0].group(2) == "KeyError"
        assert found[0].group(1) != found[1].group(1)

    def test_context_abort_inside_keeps_its_own_code(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """A code chosen inside the method passes through the map untouched."""
        err = complete(stub, 6)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == "not yours"

    def test_a_method_rule_comes_before_the_servicers_map(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """GetGraphStats maps Conflict to ABORTED; the servicer's map still serves the rest."""

        def stats(version: int) -> grpc.RpcError:
            return refused(
                lambda: stub.GetGraphStats(sleep_pb2.GetGraphStatsRequest(version=version))
            )

        first = stats(1)
        assert first.code() == grpc.StatusCode.ABORTED
        assert first.details() == "base 3 is stale"
        assert stats(2).code() == grpc.StatusCode.ABORTED  # Gone is a Conflict: the method's rule
        assert stats(3).code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_a_call_that_raises_nothing_answers(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        """The wrapper returns the method's reply."""
        assert stub.Complete(sleep_pb2.CompleteRequest(version=0)).version == 0


class TestStreaming:
    @pytest.mark.parametrize(
        ("version", "code"),
        [
            (1, grpc.StatusCode.FAILED_PRECONDITION),
            (3, grpc.StatusCode.INVALID_ARGUMENT),
            (5, grpc.StatusCode.INTERNAL),
            (6, grpc.StatusCode.PERMISSION_DENIED),
        ],
    )
    def test_a_reply_stream_ends_with_the_mapped_code_after_what_it_sent(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub, version: int, code: grpc.StatusCode
    ) -> None:
        """ReadGraph yields one chunk, then raises: the client has the chunk, then the code."""
        got: list[sleep_pb2.GraphChunk] = []
        replies = stub.ReadGraph(sleep_pb2.ReadGraphRequest(version=version))
        err = refused(lambda: got.extend(replies))
        assert [list(c.concept_ids) for c in got] == [["first"]]
        assert err.code() == code

    def test_a_reply_stream_that_raises_nothing_ends_ok(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub
    ) -> None:
        chunks = list(stub.ReadGraph(sleep_pb2.ReadGraphRequest(version=0)))
        assert [list(c.concept_ids) for c in chunks] == [["first"], ["second"]]

    @pytest.mark.parametrize(
        ("version", "code"),
        [(2, grpc.StatusCode.NOT_FOUND), (3, grpc.StatusCode.INVALID_ARGUMENT)],
    )
    def test_a_request_stream_maps_what_reading_it_raises(
        self, stub: sleep_pb2_grpc.SleepSchedulerStub, version: int, code: grpc.StatusCode
    ) -> None:
        """CommitGraph raises on the second chunk: the mapped code answers the whole stream."""
        chunks = [
            sleep_pb2.GraphChunk(header=sleep_pb2.GraphHeader(base_version=0)),
            sleep_pb2.GraphChunk(header=sleep_pb2.GraphHeader(base_version=version)),
        ]
        err = refused(lambda: stub.CommitGraph(iter(chunks)))
        assert err.code() == code


class TestErrorMap:
    def test_status_of_walks_the_class_hierarchy(self) -> None:
        """status_of finds the nearest mapped base; an unmapped class finds nothing."""

        class Deeper(Gone):
            pass

        assert ERRORS.status_of(Deeper("x")) == (grpc.StatusCode.NOT_FOUND, "x")
        assert ERRORS.status_of(RuntimeError("x")) is None

    def test_private_methods_are_not_wrapped(self) -> None:
        """Only public async methods are RPCs: a helper keeps its own behaviour."""
        assert Failing._helper.__qualname__ == "Failing._helper"
        assert not hasattr(Failing._helper, "__wrapped__")
        assert hasattr(Failing.Complete, "__wrapped__")
