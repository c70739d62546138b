"""The fifth service's domain: the words of a text, and a tally of them run as a job.

Plain Python: no gRPC, no protobuf (common/jobs.py is plain data and asyncio too).
"""

from __future__ import annotations

import asyncio
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mcp_services.common.jobs import Job, JobState

# Words a tally counts between two cancellation points (and two waits of its pace).
CHUNK = 100

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order (letters and digits; "don't" is one)."""
    return [w.lower() for w in _WORD.findall(text)]


def summary(ws: list[str], top: int = 3) -> dict[str, Any]:
    """How many words, their mean length, and the ``top`` most frequent (ties: first seen).

    Raises:
        statistics.StatisticsError: ``ws`` is empty. Left unguarded on purpose: a ValueError from
            deep in the domain that no validation caught is the service's bug, and the test of the
            fifth service checks the runner reports it INTERNAL with an error id, not as the
            client's fault.
    """
    return {
        "words": len(ws),
        "mean_length": statistics.fmean(len(w) for w in ws),
        "top": [[w, n] for w, n in Counter(ws).most_common(top)],
    }


def chunks(ws: list[str], size: int) -> Iterator[list[str]]:
    """``ws`` in consecutive pieces of ``size`` words (the last may be shorter)."""
    for i in range(0, len(ws), size):
        yield ws[i : i + size]


@dataclass(kw_only=True, eq=False)
class Tally(Job):
    """A tally's figures so far."""

    words: int = 0
    distinct: int = 0


async def tally(job: Tally, ws: list[str], pace_s: Callable[[], float]) -> None:
    """Count ``ws`` :data:`CHUNK` words at a time, waiting ``pace_s()`` seconds after each chunk
    (read each time, so a reload of the pace reaches a running tally); each chunk is a
    cancellation point."""
    job.start_running("counting")
    seen: Counter[str] = Counter()
    for piece in chunks(ws, CHUNK):
        job.cancel_token.check()
        seen.update(piece)
        done = job.words + len(piece)
        job.update(words=done, distinct=len(seen), progress=done / len(ws))
        await asyncio.sleep(pace_s())
    job.finish(JobState.SUCCEEDED, f"{job.words} words, {len(seen)} distinct")
