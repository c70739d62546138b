"""API-key authentication and roles for the gRPC servers.

A **service key** is a line of the key file (auth.api_keys_file / TORI_API_KEYS_FILE) or an entry
of auth.api_keys: ``KEY``, ``KEY ROLE`` or ``KEY ROLE NAMESPACES`` (whitespace between), where
ROLE is ``read``, ``write`` or ``admin`` and NAMESPACES a comma list of namespace names or ``*``
(every namespace, the default). Blank lines and ``#`` comments are skipped.

A bare ``KEY`` is **admin** over every namespace: that is what a key meant before keys carried a
role, and the fleet's own callers send the first admin key (the pruner commits graphs, which needs
admin), so an existing key file keeps its fleet working. Keys handed to anyone else should name
a smaller role.

Roles are ordered read < write < admin; :data:`METHOD_ROLES` says which each RPC needs: the
built-in services' in one table (tests/common/test_auth.py checks that every RPC of their protos is
in it), another service's added by :func:`register_roles` from its own module. A caller
sends ``authorization: Bearer <key>`` or ``x-api-key: <key>``; no key or a wrong one gets
UNAUTHENTICATED, a key whose role is too small PERMISSION_DENIED naming the method and the role it
needs. Health and reflection stay open so orchestrators can probe without a key.

Servicers learn who calls through :func:`current_principal` (role, namespaces, key digest, never
the key). With auth off (no key configured) every call runs as :data:`LOCAL`, all-powerful.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import grpc

from mcp_services.common.config_schema import AuthConfig
from mcp_services.common.handlers import wrap_handler

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ALL_NAMESPACES = "*"
# The same form as a gateway TENANT and the x-tori-namespace header (common/namespaces.py).
NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class AuthConfigError(Exception):
    """The configured keys cannot be used; the message names where and the fix, never a key."""


class Role(IntEnum):
    """What a key may do; each role includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, the namespaces it may use (None: all) and its key's digest."""

    role: Role
    namespaces: frozenset[str] | None
    key_digest: str

    def may_use(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


# The caller when auth is off: a process on this host, trusted with everything.
LOCAL = Principal(Role.ADMIN, None, "local")
_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "tori_principal", default=LOCAL
)


def current_principal() -> Principal:
    """The principal of the RPC being served (LOCAL when auth is off or outside a call)."""
    return _PRINCIPAL.get()


def key_digest(key: str) -> str:
    """A short, stable name for a key that reveals nothing of it (for logs and principals)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServiceKey:
    """One accepted key and what it may do. ``key`` is never shown by repr."""

    key: str = field(repr=False)
    role: Role
    namespaces: frozenset[str] | None

    @property
    def principal(self) -> Principal:
        return Principal(self.role, self.namespaces, key_digest(self.key))


_ROLES = {r.label: r for r in Role}


def parse_key_entry(entry: str, where: str) -> ServiceKey | None:
    """One entry (``KEY [ROLE [NAMESPACES]]``); None for a blank line or a comment.

    Raises:
        AuthConfigError: a malformed entry; the message names ``where`` and the fix.
    """
    text = entry.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split()
    fix = "write KEY, KEY ROLE or KEY ROLE NAMESPACES (ROLE: read, write or admin; NAMESPACES: "
    fix += "a comma list of names or *)"
    if len(parts) > 3:
        raise AuthConfigError(f"{where}: {len(parts)} fields; {fix}")
    role = Role.ADMIN
    if len(parts) >= 2:
        if parts[1].lower() not in _ROLES:
            raise AuthConfigError(f"{where}: the role is not read, write or admin; {fix}")
        role = _ROLES[parts[1].lower()]
    namespaces: frozenset[str] | None = None
    if len(parts) == 3 and parts[2] != ALL_NAMESPACES:
        names = [n for n in parts[2].split(",") if n]
        bad = [n for n in names if not NAMESPACE_RE.fullmatch(n)]
        if not names or bad:
            raise AuthConfigError(
                f"{where}: namespace {bad[0] if bad else parts[2]!r} is not a name (letters, "
                f"digits, '.', '_', ':', '-'; up to 64); {fix}"
            )
        namespaces = frozenset(names)
    return ServiceKey(parts[0], role, namespaces)


def load_service_keys(cfg: AuthConfig) -> list[ServiceKey]:
    """Keys from auth.api_keys and the key file, in order.

    Raises:
        AuthConfigError: the file cannot be read or an entry is malformed.
    """
    keys: list[ServiceKey] = []
    for i, entry in enumerate(cfg.api_keys):
        parsed = parse_key_entry(entry, f"auth.api_keys[{i}]")
        if parsed is not None:
            keys.append(parsed)
    if cfg.api_keys_file:
        path = Path(cfg.api_keys_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise AuthConfigError(
                f"auth.api_keys_file: cannot read {path} ({exc.strerror}); fix the path or unset "
                "TORI_API_KEYS_FILE"
            ) from exc
        for n, line in enumerate(lines, 1):
            parsed = parse_key_entry(line, f"auth.api_keys_file {path} line {n}")
            if parsed is not None:
                keys.append(parsed)
    return keys


def load_api_keys(cfg: AuthConfig) -> list[str]:
    """The accepted key strings, in order (see :func:`load_service_keys`)."""
    return [k.key for k in load_service_keys(cfg)]


def own_key(keys: Iterable[ServiceKey]) -> str | None:
    """The key a service or CLI of the fleet calls the others with: the first admin key over
    every namespace, else the first key, else None."""
    keys = list(keys)
    for k in keys:
        if k.role is Role.ADMIN and k.namespaces is None:
            return k.key
    return keys[0].key if keys else None


def presented_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "x-api-key":
            return str(value)
        if key == "authorization" and str(value).lower().startswith("bearer "):
            return str(value)[7:].strip()
    return None


# ---- which role each RPC needs ----------------------------------------------------------------

_R, _W, _A = Role.READ, Role.WRITE, Role.ADMIN

# Every RPC of the four services. Admin: what destroys or replaces data or changes how a service
# runs (deletes, resets, graph commits and rollbacks, config and schedules). Write: what adds data
# or starts bounded, guarded work. Read: the rest. A method missing here needs admin (fail closed).
_ROLE_TABLE: dict[str, dict[str, Role]] = {
    "tori.episodic.v1.EpisodicVault": {
        "PutEpisode": _W, "PutEpisodes": _W, "GetEpisode": _R, "ListRecent": _R, "Scan": _R,
        "GetStats": _R, "PurgeTTL": _A, "DeleteEpisode": _A, "MarkConsolidated": _W,
        "Search": _R, "Recall": _R,
    },
    "tori.sleep.v1.SleepScheduler": {
        "GetConfig": _R, "ReadGraph": _R, "CommitGraph": _A, "ListGraphVersions": _R,
        "GetGraphStats": _R, "Complete": _R, "StartConsolidation": _W,
        "GetConsolidationStatus": _R, "CancelConsolidation": _W, "GetReplayStats": _R,
        "UpdateConfig": _A, "ScheduleConsolidation": _A,
    },
    "tori.pruner.v1.SparsePruner": {
        "GetConfig": _R, "UpdateConfig": _A, "TriggerPruning": _W, "GetPruningStatus": _R,
        "CancelPruning": _W, "GetPruningStats": _R, "SchedulePruning": _A, "GetEdgeUsage": _R,
        "PreviewPruning": _R, "ListBackups": _R, "RollbackPruning": _A,
    },
    "tori.koopman.v1.KoopmanLearner": {
        "GetConfig": _R, "ProcessActivationBatch": _W, "GetProcessingStatus": _R,
        "GetSpectralModes": _R, "UpdateOscillatorCouplings": _W, "PredictActivations": _R,
        "GetStabilityAnalysis": _R, "GetKclStats": _R, "UpdateConfig": _A, "ResetSystem": _A,
    },
}  # fmt: skip

METHOD_ROLES: dict[str, Role] = {
    f"/{service}/{method}": role
    for service, methods in _ROLE_TABLE.items()
    for method, role in methods.items()
}


def register_roles(service: str, roles: Mapping[str, Role]) -> None:
    """Classify the RPCs of a service beyond the built-in ones, from its own module (before its
    server starts): ``register_roles("tori.words.v1.Words", {"Count": Role.READ})``. A method
    left out needs admin, as in the table.

    Raises:
        ValueError: ``service`` already has roles (a built-in one, or registered before).
    """
    prefix = f"/{service}/"
    if any(method.startswith(prefix) for method in METHOD_ROLES):
        raise ValueError(
            f"the RPC roles of {service} are already registered; register each service's once"
        )
    METHOD_ROLES.update({f"{prefix}{method}": role for method, role in roles.items()})


def required_role(method: str) -> Role:
    """The role ``method`` (``/pkg.Service/Method``) needs; admin for one not in the table."""
    return METHOD_ROLES.get(method, Role.ADMIN)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks the caller's key and role on every RPC but health and reflection."""

    def __init__(self, keys: Iterable[ServiceKey | str]) -> None:
        parsed = [k if isinstance(k, ServiceKey) else ServiceKey(k, Role.ADMIN, None) for k in keys]
        if not parsed:
            raise ValueError("keys: at least one API key is needed; leave auth off instead")
        self._keys = [(k.key.encode(), k.principal) for k in parsed]

    def _principal(self, key: str | None) -> Principal | None:
        if key is None:
            return None
        given = key.encode()
        found: Principal | None = None
        # Compare against every key so timing does not reveal which one matched.
        for stored, principal in self._keys:
            if hmac.compare_digest(given, stored) and found is None:
                found = principal
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        key = presented_key(handler_call_details.invocation_metadata)
        principal = self._principal(key)
        needed = required_role(method)

        async def around(context: grpc.aio.ServicerContext, run: Callable[[], Any]) -> Any:
            if principal is None:
                reason = "no API key was sent" if key is None else "the API key is not valid"
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{reason}; send metadata 'authorization: Bearer <key>' with a configured key",
                )
            assert principal is not None
            if principal.role < needed:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method.rsplit('/', 1)[-1]} needs a key of role {needed.label}; this key "
                    f"has role {principal.role.label} (key {principal.key_digest}); use a key "
                    f"with role {needed.label} in the service key file",
                )
            token = _PRINCIPAL.set(principal)
            try:
                return await run()
            finally:
                _PRINCIPAL.reset(token)

        return wrap_handler(handler, around)
