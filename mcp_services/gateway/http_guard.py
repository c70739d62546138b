"""A deadline for each HTTP request head: uvicorn's h11 protocol with a slowloris guard.

uvicorn (0.5x) times out only an idle keep-alive connection (Config.timeout_keep_alive, armed after
a response); it has no timeout for reading a request's head, so a client that opens a connection
and sends a header line now and then (or nothing at all) holds it forever. This protocol arms a
timer when a connection opens and again after each response; if no complete request head
(request line and headers) has arrived when it fires, the connection is closed. A request whose
head arrived is never cut by it, however long its body or response takes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger(__name__)


class HeadTimeoutH11Protocol(H11Protocol):
    """H11Protocol closing a connection whose next request head is not complete in time."""

    # Set on the subclass made by with_head_timeout().
    head_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_cycle: object = None

    def _arm_head_timer(self, delay: float) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        # uvicorn makes a new RequestResponseCycle for each request head it parses: while the
        # cycle is the one seen here, the next head has not arrived.
        self._waiting_cycle = self.cycle
        self._head_timer = self.loop.call_later(delay, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is self._waiting_cycle and not self.transport.is_closing():
            log.info(
                "http_request_head_timeout",
                client=f"{self.client[0]}:{self.client[1]}" if self.client else "",
                timeout_s=self.head_timeout_s,
            )
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer(self.head_timeout_s)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The idle keep-alive timeout closes a silent connection first; this bounds one that
        # starts a head and stalls.
        self._arm_head_timer(self.timeout_keep_alive + self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def with_head_timeout(seconds: float) -> type[HeadTimeoutH11Protocol]:
    """The protocol class to give uvicorn.Config(http=...) for a head timeout of `seconds`."""
    return type("HeadTimeoutH11", (HeadTimeoutH11Protocol,), {"head_timeout_s": seconds})
