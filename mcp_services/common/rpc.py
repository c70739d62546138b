"""Status codes from exceptions: one abort, and a declarative error map per servicer.

A servicer says once which of its exceptions mean which status code, and its RPC methods raise::

    ERRORS = ErrorMap({
        VersionConflict: Status(grpc.StatusCode.FAILED_PRECONDITION, "{exc}; try again"),
        JobNotFound: grpc.StatusCode.NOT_FOUND,
    })

    @ERRORS.servicer
    class PrunerServicer(pruner_pb2_grpc.SparsePrunerServicer):
        @errors({KnobError: Status(grpc.StatusCode.INVALID_ARGUMENT, "options.{exc}")})
        async def TriggerPruning(self, request, context): ...

Every public coroutine and async generator of the class (unary and streaming RPCs) then runs
inside the map. An exception that escapes one:

- whose class, or its nearest base, is in the method's rules (:func:`errors`) or else in the
  servicer's map, aborts with that code and message (``str(exc)`` unless the rule gives a
  template; ``{exc}`` in it is the exception): the most specific class wins;
- else an :class:`~mcp_services.common.errors.InputError` aborts INVALID_ARGUMENT with its message;
- else it is the service's fault: INTERNAL with a short error id, and the traceback is logged
  under that id (passwords masked), so a bug is never reported as the client's;
- ``context.abort``'s own exception (a code chosen inside the method), cancellation and other
  BaseExceptions pass through untouched.
"""

from __future__ import annotations

import functools
import inspect
import secrets
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple, NoReturn, TypeAlias, TypeVar

import grpc
import structlog

from mcp_services.common.errors import InputError
from mcp_services.common.secrets_mask import mask_text

log = structlog.get_logger(__name__)

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


class Status(NamedTuple):
    """A rule's answer: the code, and the message as a template over the exception."""

    code: grpc.StatusCode
    message: str = "{exc}"


Rules: TypeAlias = Mapping[type[BaseException], "grpc.StatusCode | Status"]

_RULES_ATTR = "__rpc_errors__"


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with `code` and `message` (raises grpc's AbortError; never returns)."""
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # abort always raises


def errors(rules: Rules) -> Callable[[F], F]:
    """Rules for one RPC method, checked before its servicer's map (e.g. a message of its own)."""

    def mark(fn: F) -> F:
        setattr(fn, _RULES_ATTR, dict(rules))
        return fn

    return mark


class ErrorMap:
    """Exception classes to status codes; see the module docstring for the order of lookup."""

    def __init__(self, rules: Rules) -> None:
        self._rules: dict[type[BaseException], Status] = {
            cls: rule if isinstance(rule, Status) else Status(rule) for cls, rule in rules.items()
        }

    def status_of(self, exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
        """The code and message for `exc` by the most specific class mapped, or None."""
        for cls in type(exc).__mro__:
            rule = self._rules.get(cls)
            if rule is not None:
                return rule.code, rule.message.format(exc=exc)
        return None

    def servicer(self, cls: C) -> C:
        """Class decorator: run every public async method defined in `cls`'s body inside this map
        (a subclass that overrides one must be decorated itself)."""
        for name, fn in list(vars(cls).items()):
            if name.startswith("_"):
                continue
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                own = getattr(fn, _RULES_ATTR, None)
                chain = (ErrorMap(own), self) if own else (self,)
                setattr(cls, name, _guarded(fn, *chain))
        return cls


async def _map_and_abort(
    context: grpc.aio.ServicerContext, exc: Exception, maps: tuple[ErrorMap, ...], rpc: str
) -> NoReturn:
    """Abort the call for `exc` by the first map that knows it, InputError, else INTERNAL."""
    for m in maps:
        found = m.status_of(exc)
        if found is not None:
            await abort(context, *found)
    if isinstance(exc, InputError):
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    error_id = secrets.token_hex(4)
    log.error(
        "rpc_internal_error",
        rpc=rpc,
        error_id=error_id,
        error=type(exc).__name__,
        exception=mask_text("".join(traceback.format_exception(exc))),
    )
    await abort(
        context,
        grpc.StatusCode.INTERNAL,
        f"internal error {error_id} ({type(exc).__name__}): the service logged its cause under "
        "this error id",
    )


def _guarded(fn: Callable[..., Any], *maps: ErrorMap) -> Callable[..., Any]:
    """`fn` (an RPC method: self, request or request iterator, context) inside `maps`."""
    rpc = fn.__qualname__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
            replies: AsyncIterator[Any] = fn(self, request, context)
            try:
                async for reply in replies:
                    yield reply
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _map_and_abort(context, exc, maps, rpc)

        return stream

    @functools.wraps(fn)
    async def unary(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call: Awaitable[Any] = fn(self, request, context)
        try:
            return await call
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _map_and_abort(context, exc, maps, rpc)

    return unary
