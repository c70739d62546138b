"""API-key authentication for gRPC servers.

Off unless at least one key is configured (auth.api_keys or auth.api_keys_file). A caller sends
`authorization: Bearer <key>` or `x-api-key: <key>`; a missing or wrong key gets UNAUTHENTICATED.
Health and reflection stay open so orchestrators can probe without a key.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from mcp_services.common.config_schema import AuthConfig
from mcp_services.common.handlers import wrap_handler

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthConfigError(Exception):
    """The configured key file cannot be read."""


def load_api_keys(cfg: AuthConfig) -> list[str]:
    """Keys from the config list and the key file (one a line; blanks and # comments skipped)."""
    keys = list(cfg.api_keys)
    if cfg.api_keys_file:
        path = Path(cfg.api_keys_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise AuthConfigError(
                f"auth.api_keys_file: cannot read {path} ({exc.strerror}); fix the path or unset "
                "TORI_API_KEYS_FILE"
            ) from exc
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return keys


def presented_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "x-api-key":
            return str(value)
        if key == "authorization" and str(value).lower().startswith("bearer "):
            return str(value)[7:].strip()
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]
        if not self._keys:
            raise ValueError("keys: at least one API key is needed; leave auth off instead")

    def _allowed(self, key: str | None) -> bool:
        if key is None:
            return False
        given = key.encode()
        # Compare against every key so timing does not reveal which one matched.
        return any([hmac.compare_digest(given, k) for k in self._keys])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        key = presented_key(handler_call_details.invocation_metadata)
        if self._allowed(key):
            return handler

        async def refuse(context: grpc.aio.ServicerContext, run: Callable[[], Any]) -> Any:
            reason = "no API key was sent" if key is None else "the API key is not valid"
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{reason}; send metadata 'authorization: Bearer <key>' with a configured key",
            )

        return wrap_handler(handler, refuse)
