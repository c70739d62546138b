"""Wrap a grpc.aio method handler of any of the four call kinds.

Interceptors (metrics, auth) need to run code around a call whatever its kind; this module does the
kind dispatch once. A wrapper gets the call's context and an awaitable-producing thunk.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

# around(context, run) -> result: `run()` performs the call; `around` may time it, refuse it, etc.
Around = Callable[[grpc.aio.ServicerContext, Callable[[], Awaitable[Any]]], Awaitable[Any]]


def call_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


async def _drain(result: Any, context: grpc.aio.ServicerContext) -> None:
    # A streaming behavior is either an async generator or a coroutine that calls context.write.
    if inspect.isasyncgen(result):
        async for item in result:
            await context.write(item)
    elif inspect.isawaitable(result):
        await result


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """A handler that runs `around` about every invocation of `handler`."""
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async def run() -> Any:
                result = inner_uu(request, context)
                return await result if inspect.isawaitable(result) else result

            return await around(context, run)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            async def run() -> Any:
                result = inner_su(request_iterator, context)
                return await result if inspect.isawaitable(result) else result

            return await around(context, run)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        # Responses go out through context.write inside `run`, so the whole stream, not only its
        # start, happens inside `around`; grpc.aio accepts a coroutine that writes this way.
        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
            async def run() -> None:
                await _drain(inner_us(request, context), context)

            await around(context, run)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        async def run() -> None:
            await _drain(inner_ss(request_iterator, context), context)

        await around(context, run)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )
