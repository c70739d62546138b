"""Bounds on a service's client-streaming RPCs: how many run at once, and how many bytes one may
send.

A client stream that is never half-closed holds whatever the server keeps of it until the call
ends, so both bounds are needed: the byte budget caps one stream, the cap on concurrent streams
caps their sum. Both refuse with RESOURCE_EXHAUSTED and a message naming the config key and its
value (StreamRefused carries it; the servicer maps it to the status).

    limits = StreamLimits(4, 256 << 20, "vault.limits")
    with limits.open() as budget:        # StreamRefused when 4 are open already
        async for request in requests:
            budget.charge(request.ByteSize())  # StreamRefused past 256 MiB
"""

from __future__ import annotations

import threading
from types import TracebackType


class StreamRefused(Exception):
    """A client stream over its service's bounds; the message says which key and what to do."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class StreamBudget:
    """One open stream's slot and byte count; release the slot by leaving the `with` block."""

    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self.received = 0

    def charge(self, nbytes: int) -> None:
        """Count `nbytes` more of this stream.

        Raises:
            StreamRefused: when the stream has now sent more than max_stream_bytes.
        """
        self.received += nbytes
        cap = self._limits.max_stream_bytes
        if self.received > cap:
            raise StreamRefused(
                f"this stream sent more than {cap} bytes ({_mib(cap)}, "
                f"{self._limits.section}.max_stream_bytes = {cap}); nothing of it was stored: "
                "split the batch over several smaller streams"
            )

    def __enter__(self) -> StreamBudget:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._limits._release()


class StreamLimits:
    """Thread-safe; one per service (every client-streaming RPC of it shares the cap)."""

    def __init__(self, max_concurrent_streams: int, max_stream_bytes: int, section: str) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.max_stream_bytes = max_stream_bytes
        self.section = section
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        return self._open

    def open(self) -> StreamBudget:
        """A slot for one more stream.

        Raises:
            StreamRefused: when max_concurrent_streams streams are open already.
        """
        with self._lock:
            cap = self.max_concurrent_streams
            if self._open >= cap:
                raise StreamRefused(
                    f"{self._open} client streams are open on this service, its limit "
                    f"({self.section}.max_concurrent_streams = {cap}); retry when one has "
                    "finished, or raise the limit"
                )
            self._open += 1
        return StreamBudget(self)

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
