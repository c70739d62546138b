"""Cue completion in memory: a :class:`CueCompletion` for the vault's Recall.

Same contract as :class:`~mcp_services.episodic_vault.adapters.completion.CueCompleter` over a
real scheduler (tests/episodic_vault/test_completion_contract.py holds both to it) for graphs of
clean, disjoint assemblies: a cue settles into the stored assembly sharing most of its concepts
(all of that assembly on, strength 1), the cue's active concepts (strength above 0.5) no assembly
knows are kept as given, weaker unknown ones are dropped, not
``wanted`` is DISABLED, and with :attr:`down` set (the scheduler away) the answer is UNAVAILABLE
with the cue as given, naming the address. It does not model a graph's energy landscape: a cue
split between assemblies is not in the contract.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from mcp_services.episodic_vault.domain.completion import Completed, CompletionStatus

ACTIVE_THRESHOLD = 0.5  # the scheduler's (sleep_scheduler.domain.activations)


class FakeCompleter:
    """Completes through ``assemblies`` (each a set of concept ids), graph ``version``."""

    def __init__(
        self,
        assemblies: Sequence[Collection[str]],
        version: int = 1,
        address: str = "fake-scheduler:50052",
    ) -> None:
        self.assemblies = [frozenset(a) for a in assemblies]
        self.version = version
        self.address = address
        self.down = False
        self.calls = 0
        self.closed = False

    async def complete(self, cue: Mapping[str, float], wanted: bool) -> Completed:
        given = dict(cue)
        if not wanted:
            return Completed(
                CompletionStatus.DISABLED, given, "the request asked for no completion"
            )
        self.calls += 1
        if self.down:
            return Completed(
                CompletionStatus.UNAVAILABLE,
                given,
                f"the scheduler at {self.address} failed: UNAVAILABLE: it is down; ranked by "
                "the cue as given",
            )
        # As the scheduler reads a cue: only concepts above ACTIVE_THRESHOLD (0.5) are on.
        active = [c for c, s in given.items() if s > ACTIVE_THRESHOLD]
        known = frozenset().union(*self.assemblies)
        best = max(self.assemblies, key=lambda a: len(a.intersection(active)), default=frozenset())
        effective = {c: 1.0 for c in sorted(best)} if best.intersection(active) else {}
        for c in active:
            if c not in known:
                effective.setdefault(c, given[c])
        if not effective:
            return Completed(
                CompletionStatus.UNAVAILABLE,
                given,
                f"graph version {self.version} settled to no active concept; ranked by the cue "
                "as given",
                self.version,
            )
        return Completed(CompletionStatus.APPLIED, effective, "", self.version)

    async def close(self) -> None:
        self.closed = True
