"""The fifth service's rpc layer: its proto service and its servicer.

``tori.test.v1.Words`` takes and answers protobuf's well-known types (every request a
StringValue), so it needs no generated code: its file descriptor is built here and added to the
default descriptor pool, where reflection finds it as it finds a generated service's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2, wrappers_pb2

from mcp_services.common.auth import Role, register_roles
from mcp_services.common.errors import InputError
from mcp_services.common.jobs import JobBusy, JobNotFound, JobRegistry
from mcp_services.common.rpc import ErrorMap
from tests.fifth_service.domain import Tally, summary, tally, words
from tests.fifth_service.settings import WordsConfig

SERVICE = "tori.test.v1.Words"
# Each RPC: its reply type and the role a key needs to call it.
RPCS: dict[str, tuple[type[struct_pb2.Struct | wrappers_pb2.StringValue], Role]] = {
    "Count": (struct_pb2.Struct, Role.READ),
    "StartTally": (wrappers_pb2.StringValue, Role.WRITE),
    "GetTally": (struct_pb2.Struct, Role.READ),
}

_file = descriptor_pb2.FileDescriptorProto(
    name="tori/test/v1/words.proto",
    package=SERVICE.rpartition(".")[0],
    syntax="proto3",
    dependency=[wrappers_pb2.DESCRIPTOR.name, struct_pb2.DESCRIPTOR.name],
)
_service = _file.service.add(name=SERVICE.rpartition(".")[2])
for _name, (_reply, _) in RPCS.items():
    _service.method.add(
        name=_name,
        input_type=f".{wrappers_pb2.StringValue.DESCRIPTOR.full_name}",
        output_type=f".{_reply.DESCRIPTOR.full_name}",
    )
descriptor_pool.Default().AddSerializedFile(_file.SerializeToString())
register_roles(SERVICE, {name: role for name, (_, role) in RPCS.items()})

ERRORS = ErrorMap({JobBusy: grpc.StatusCode.ABORTED, JobNotFound: grpc.StatusCode.NOT_FOUND})


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    reply = struct_pb2.Struct()
    reply.update(values)
    return reply


@ERRORS.servicer
class WordsServicer:
    """``config``: the section in force (a reload replaces it); ``jobs``: the tallies."""

    def __init__(self, config: Callable[[], WordsConfig], jobs: JobRegistry[Tally]) -> None:
        self._config = config
        self._jobs = jobs

    def _words(self, request: wrappers_pb2.StringValue) -> list[str]:
        limit = self._config().max_chars
        if len(request.value) > limit:
            raise InputError(
                f"text: {len(request.value)} characters, more than words.max_chars = {limit}; "
                "send a shorter text"
            )
        return words(request.value)

    async def Count(
        self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
    ) -> struct_pb2.Struct:
        return _struct(summary(self._words(request)))

    async def StartTally(
        self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
    ) -> wrappers_pb2.StringValue:
        ws = self._words(request)
        job = self._jobs.start(Tally(trigger="StartTally"), lambda j: tally(j, ws, self._pace))
        return wrappers_pb2.StringValue(value=job.job_id)

    async def GetTally(
        self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
    ) -> struct_pb2.Struct:
        job = self._jobs.get(request.value).snapshot()
        return _struct(
            {
                "state": job.state.value,
                "progress": job.progress,
                "words": job.words,
                "distinct": job.distinct,
                "message": job.message,
            }
        )

    def _pace(self) -> float:
        return self._config().pace_s


def add_to_server(servicer: WordsServicer, server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=reply.SerializeToString,
        )
        for name, (reply, _) in RPCS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
