"""Undecodable request bytes become INVALID_ARGUMENT, not UNKNOWN.

grpc-python parses a request with the generated ``FromString`` before any servicer code runs; a
message whose wire format is corrupt (or of another type) raises DecodeError there, which the
framework reports as UNKNOWN "Unexpected <class DecodeError>". That is the client's mistake, so
this interceptor swaps in a deserializer that returns a marker instead of raising, and answers
the marker with INVALID_ARGUMENT naming the expected message type, before the servicer sees it.
It is the innermost interceptor, so metrics count the refusal and auth still runs first.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mcp_services.common.handlers import _drain


class Undecodable:
    """What the guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "the request message"))


def guard_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    type_name = _type_name(deserializer)

    def safe(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or anything a custom deserializer raises
            return Undecodable(
                f"the request is not a valid {type_name} ({exc}); encode it with the service's "
                "published .proto (proto/tori/...)"
            )

    return safe


async def _refuse(context: grpc.aio.ServicerContext, bad: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad.message)


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        yield request


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def guard_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, with undecodable requests answered INVALID_ARGUMENT."""
    if handler.request_deserializer is None:
        return handler
    deserializer = guard_deserializer(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.unary_unary:
        uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            return await _result(uu(request, context))

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
    if handler.stream_unary:
        su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await _result(su(_checked(requests, context), context))

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
    if handler.unary_stream:
        us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            await _drain(us(request, context), context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
    ss = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await _drain(ss(_checked(requests, context), context), context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Installs :func:`guard_handler` on every method of the server."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return guard_handler(handler)
