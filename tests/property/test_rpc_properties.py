"""Property tests over every RPC of every service: arbitrary requests and corrupt bytes.

For each method of each service (read from the service descriptor, so a new RPC is covered the
day it is added) hypothesis sends generated requests and mutated encodings to a real server.
The properties: the server never answers UNKNOWN, INTERNAL or DATA_LOSS (a crash or an
unhandled error); a refused request changes nothing (the service's state fingerprint is the same
before and after); and the server is still serving at the end.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_services.common.health import check
from tests.property.fleet import CALL_TIMEOUT_S, METHODS, Fleet, Running, Target
from tests.property.strategies import corrupted, messages

# Enough to matter, few enough for CI: every method gets this many generated requests and as
# many corrupt encodings. PROPERTY_EXAMPLES raises it for a long local run.
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "60"))
STREAM_ITEMS = 50

# A crash or an unhandled exception on the server; never an acceptable answer to a request.
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


def _call(channel: grpc.Channel, method: MethodDescriptor, payload: Any) -> grpc.StatusCode:
    """Send raw request bytes (a list of them for client streaming); drain streamed replies."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming and method.server_streaming:
            replies = channel.stream_stream(path)(iter(payload), timeout=CALL_TIMEOUT_S)
            for n, _ in enumerate(replies):
                if n >= STREAM_ITEMS:
                    replies.cancel()
                    return grpc.StatusCode.OK
        elif method.client_streaming:
            channel.stream_unary(path)(iter(payload), timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            replies = channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT_S)
            for n, _ in enumerate(replies):
                if n >= STREAM_ITEMS:
                    replies.cancel()
                    return grpc.StatusCode.OK
        else:
            channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _request_class(method: MethodDescriptor) -> type[Message]:
    return GetMessageClass(method.input_type)


def _check(run: Running, method: MethodDescriptor, payload: Any) -> None:
    before = run.target.fingerprint(run.channel)
    code = _call(run.channel, method, payload)
    assert code not in FORBIDDEN, f"{method.full_name} answered {code.name}"
    if code != grpc.StatusCode.OK:
        after = run.target.fingerprint(run.channel)
        assert after == before, f"{method.full_name} refused ({code.name}) but changed state"


def _ids(param: tuple[Target, MethodDescriptor]) -> str:
    return f"{param[0].name}.{param[1].name}"


COMMON = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


def _exercise(run: Running, method: MethodDescriptor, payloads: st.SearchStrategy[Any]) -> None:
    @COMMON
    @given(payload=payloads)
    def prop(payload: Any) -> None:
        _check(run, method, payload)

    prop()
    assert check(run.address) == "SERVING"


@pytest.mark.parametrize("case", METHODS, ids=[_ids(c) for c in METHODS])
def test_generated_requests(case: tuple[Target, MethodDescriptor], fleet: Fleet) -> None:
    target, method = case
    one = messages(_request_class(method)).map(lambda m: m.SerializeToString())
    payloads = st.lists(one, min_size=0, max_size=4) if method.client_streaming else one
    _exercise(fleet.services[target.name], method, payloads)


@pytest.mark.parametrize("case", METHODS, ids=[_ids(c) for c in METHODS])
def test_corrupt_encodings(case: tuple[Target, MethodDescriptor], fleet: Fleet) -> None:
    target, method = case
    one = corrupted(_request_class(method))
    payloads = st.lists(one, min_size=1, max_size=3) if method.client_streaming else one
    _exercise(fleet.services[target.name], method, payloads)
