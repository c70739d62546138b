"""Namespaces (tenants): which one a call is for, and the rules a name follows.

A call to a service names its namespace in the gRPC metadata ``x-tori-namespace`` (like Grafana
Mimir's X-Scope-OrgID); a call without it is for ``default``, so a deployment with one namespace
behaves as one without namespaces. The gateway sets it from the caller's key (a key's TENANT is its
namespace), never from tool arguments.

A service that keeps data per namespace registers its servicer with :func:`add_scoped_servicer`:
every call is then checked (a bad name is INVALID_ARGUMENT naming the header and the form; a caller
whose service key is bound to other namespaces gets PERMISSION_DENIED naming the namespace) and runs
with :func:`current_namespace` set, also inside the worker threads of a :class:`ContextExecutor`.
The name pattern is auth.NAMESPACE_RE, the gateway's TENANT form; a key's namespaces come from
auth.current_principal().
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry

from mcp_services.common.auth import NAMESPACE_RE as NAMESPACE_RE
from mcp_services.common.auth import current_principal
from mcp_services.common.config_schema import Settings
from mcp_services.common.event_bus import EventBus
from mcp_services.common.handlers import wrap_handler
from mcp_services.common.rpc import abort

HEADER = "x-tori-namespace"
DEFAULT = "default"
NAMESPACES_DIR = "namespaces"
FORM = "1-64 characters from A-Z a-z 0-9 . _ : -, starting with a letter or digit"

_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("tori_namespace", default=DEFAULT)
T = TypeVar("T")


class InvalidNamespace(ValueError):
    """A namespace name that does not follow NAMESPACE_RE; the message names the header."""


def check_namespace(name: str, where: str = HEADER) -> str:
    """``name`` when it is a valid namespace, else InvalidNamespace naming ``where``."""
    if not NAMESPACE_RE.fullmatch(name):
        raise InvalidNamespace(f"{where}: {name[:70]!r} is not a namespace; give {FORM}")
    return name


def namespace_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The namespace a call's metadata names (``default`` when it names none).

    The header must come at most once: with two, a proxy or another reader could take the other
    one than this service does, so the call is refused rather than one of them chosen.
    """
    names = [
        value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        for key, value in metadata or ()
        if key == HEADER
    ]
    if len(names) > 1:
        raise InvalidNamespace(f"{HEADER}: sent {len(names)} times; send it once")
    return check_namespace(names[0]) if names else DEFAULT


def namespace_metadata(namespace: str) -> tuple[tuple[str, str], ...]:
    """The metadata that sends a call for ``namespace``."""
    return ((HEADER, check_namespace(namespace, "namespace")),)


def current_namespace() -> str:
    """The namespace of the call being served (``default`` outside one)."""
    return _CURRENT.get()


class ContextExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's contextvars context, so storage code on a
    worker thread sees the namespace of the call that submitted it."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)


# Prepares a namespace before the call runs (e.g. opens its store); may abort the call.
Prepare = Callable[[grpc.aio.ServicerContext, str], Awaitable[None]]


def _scoped(prepare: Prepare | None) -> Callable[..., Awaitable[Any]]:
    async def around(context: grpc.aio.ServicerContext, run: Callable[[], Awaitable[Any]]) -> Any:
        try:
            namespace = namespace_of(context.invocation_metadata())
        except InvalidNamespace as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not current_principal().may_use(namespace):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"namespace {namespace!r} is not one this service key may use; send "
                f"{HEADER} with one of its namespaces, or ask the operator to bind the key to it",
            )
        if prepare is not None:
            await prepare(context, namespace)
        token = _CURRENT.set(namespace)
        try:
            return await run()
        finally:
            _CURRENT.reset(token)

    return around


class _Capture:
    """Stands in for the server while a generated add_*_to_server registers its handlers."""

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive by add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.registered[service] = handlers


def add_scoped_servicer(
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    server: grpc.aio.Server,
    prepare: Prepare | None = None,
) -> None:
    """Register ``servicer`` (with its generated ``add_*_to_server``) so that every call is
    checked for its namespace and runs with current_namespace() set."""
    capture = _Capture()
    add_to_server(servicer, capture)
    around = _scoped(prepare)
    for service, handlers in capture.registered.items():
        wrapped = {name: wrap_handler(h, around) for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, wrapped)


class TooManyNamespaces(Exception):
    """A service holds as many namespaces as it may; the message says the limit and the way out."""


class PerNamespace(Generic[T]):
    """What a service keeps per namespace (a store, a graph unit), made at first use.

    Thread-safe: ``open`` makes a namespace's value once (under a lock, so two first calls do not
    make two) and refuses beyond ``limit`` namespaces with TooManyNamespaces naming ``what``.
    """

    def __init__(self, make: Callable[[str], T], limit: int, what: str) -> None:
        self._make = make
        self._limit = limit
        self._what = what
        self._values: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str) -> T | None:
        return self._values.get(namespace)

    def put(self, namespace: str, value: T) -> None:
        with self._lock:
            self._values[namespace] = value

    def open(self, namespace: str) -> T:
        value = self._values.get(namespace)
        if value is not None:
            return value
        with self._lock:
            value = self._values.get(namespace)
            if value is not None:
                return value
            if len(self._values) >= self._limit:
                raise TooManyNamespaces(
                    f"this {self._what} holds {self._limit} namespaces, its limit; use an "
                    f"existing namespace or run another {self._what} for more tenants"
                )
            value = self._make(namespace)
            self._values[namespace] = value
            return value

    def items(self) -> list[tuple[str, T]]:
        return list(self._values.items())

    def take(self, keep: Callable[[str], bool] = lambda _: False) -> list[T]:
        """Forget every namespace but those ``keep`` names; what was forgotten (to close)."""
        with self._lock:
            gone = [v for ns, v in self._values.items() if not keep(ns)]
            self._values = {ns: v for ns, v in self._values.items() if keep(ns)}
        return gone


class Unit(Protocol):
    """What a service keeps for one namespace: the servicer that answers it, how to make it ready
    (load its state) and how to end it."""

    @property
    def servicer(self) -> Any: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


U = TypeVar("U", bound=Unit)


class NamespaceUnits(Generic[U]):
    """A service's units by namespace: the default one given, the others made at first call.

    :meth:`prepare` is the hook for add_scoped_servicer (it makes the unit before the call runs),
    :meth:`servicer` the servicer to register: each RPC is answered by the calling namespace's
    unit. ``make`` runs on the serving event loop (a unit may own channels of it).
    """

    def __init__(
        self, service: ServiceDescriptor, default: U, make: Callable[[str], U], limit: int
    ) -> None:
        self._service = service
        self._units: PerNamespace[U] = PerNamespace(make, limit, service.name)
        self._units.put(DEFAULT, default)
        self._ready = {DEFAULT}  # started: their calls may run
        self._opening = asyncio.Lock()

    def get(self, namespace: str) -> U | None:
        return self._units.get(namespace)

    def open(self, namespace: str) -> U:
        return self._units.open(namespace)

    def current(self) -> U:
        unit = self._units.get(current_namespace())
        assert unit is not None, "the namespace's unit is made before its call runs"
        return unit

    async def prepare(self, context: grpc.aio.ServicerContext, namespace: str) -> None:
        if namespace in self._ready:
            return
        async with self._opening:  # one first call makes and starts the unit; others wait
            if namespace in self._ready:
                return
            try:
                unit = self._units.open(namespace)
            except TooManyNamespaces as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except OSError as exc:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the data of namespace {namespace!r} cannot be opened ({exc.strerror}); "
                    "retry later",
                )
            try:
                await unit.start()
            except Exception as exc:  # its state cannot be loaded: say so, keep nothing of it
                for gone in self._units.take(keep=lambda ns: ns != namespace):
                    await gone.close()
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the state of namespace {namespace!r} cannot be loaded ({exc}); tell the "
                    "operator",
                )
            self._ready.add(namespace)

    async def close(self) -> None:
        """Close every unit but the default one (the service closes its own)."""
        self._ready = {DEFAULT}
        for unit in self._units.take(keep=lambda ns: ns == DEFAULT):
            await unit.close()

    def servicer(self) -> Any:
        """An object with every RPC of the service, each answered by the calling namespace's
        unit (its method returns the coroutine or async generator the scoped handler runs)."""
        units = self

        def method(name: str) -> Callable[..., Any]:
            def call(_self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
                return getattr(units.current().servicer, name)(request, context)

            call.__name__ = name
            return call

        attrs = {m.name: method(m.name) for m in self._service.methods}
        return type(f"{self._service.name}ByNamespace", (), attrs)()


def quiet_bus(settings: Settings, service: str) -> EventBus:
    """An event bus that publishes nothing: a non-default namespace's pruner and learner units
    announce nothing (their events carry no namespace, so the default namespace's consumers
    would act on them; consolidation.completed, which names its namespace, goes on the real
    bus)."""
    return EventBus(settings.redis.model_copy(update={"url": ""}), service, CollectorRegistry())


def namespace_dir(root: Path, namespace: str) -> Path:
    """Where a service keeps ``namespace``'s files under its data directory ``root``: ``root``
    itself for the default namespace (where a deployment without namespaces keeps them),
    ``root/namespaces/<ns>`` for another (a name holds no "/" and does not start with ".")."""
    return root if namespace == DEFAULT else root / NAMESPACES_DIR / namespace
