"""What Recall needs from cue completion: :class:`CueCompletion`, and its outcome.

The servicer depends on this protocol, not on gRPC: the server wiring hands it
:class:`~mcp_services.episodic_vault.adapters.completion.CueCompleter` (the SleepScheduler's
Complete), tests may hand it the in-memory completer of tests/fakes/completion.py, held to the
same contract (tests/episodic_vault/test_completion_contract.py). Completion never fails a
Recall: when it cannot help, the outcome says why and carries the cue as given.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class CompletionStatus(enum.IntEnum):
    """Values match tori.episodic.v1.Completion."""

    APPLIED = 1
    DISABLED = 2
    UNAVAILABLE = 3


@dataclass(frozen=True, slots=True)
class Completed:
    """The cue Recall ranks by (concept id -> strength in (0, 1]) and how it came to be."""

    status: CompletionStatus
    cue: dict[str, float]
    detail: str = ""
    graph_version: int = 0


class CueCompletion(Protocol):
    async def complete(self, cue: Mapping[str, float], wanted: bool) -> Completed:
        """``cue`` completed through the recalling namespace's consolidated graph: APPLIED with
        the settled concepts (plus the cue's concepts the graph does not know), DISABLED when
        not ``wanted`` or switched off, UNAVAILABLE (with the cue as given) otherwise."""
        ...

    async def close(self) -> None: ...
