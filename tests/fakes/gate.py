"""A gate that holds the first call through it until the test releases it.

Events are threading events, so a test thread can wait on a call made in a server's event loop
thread, and an async test can wait through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, Self, TypeVar

S = TypeVar("S")
HOLD_GUARD_S = 60.0  # a guard against a hang, not a timing: a test releases far sooner


class Gate:
    """:attr:`arrived` is set when the first call reaches :meth:`passage`; that call waits there
    until :meth:`release`. Later calls pass straight through."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self._released = threading.Event()
        self._used = False

    def release(self) -> None:
        self._released.set()

    async def passage(self) -> None:
        if self._used:
            return
        self._used = True
        self.arrived.set()
        if not await asyncio.to_thread(self._released.wait, HOLD_GUARD_S):
            raise AssertionError(f"the held call was not released within {HOLD_GUARD_S} s")


class Held(Gate, Generic[S]):
    """A gate in front of a source of type ``S``, given now or later by :meth:`around` (e.g.
    ``wrap=held.around`` where a server makes the real client)."""

    def __init__(self, source: S | None = None) -> None:
        super().__init__()
        self._source = source

    def around(self, source: S) -> Self:
        self._source = source
        return self

    @property
    def source(self) -> S:
        assert self._source is not None, f"{type(self).__name__}.around(source) was never called"
        return self._source
