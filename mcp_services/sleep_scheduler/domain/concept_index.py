"""The concept index: string concept ids mapped to dense matrix positions.

The index only ever grows (a concept keeps its position for the life of the graph), so a
position stored anywhere next to a graph version stays valid in every later version. It is
persisted with the graph (see :meth:`ConceptGraph.to_arrays`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ConceptIndex:
    """An append-only mapping from concept id to a dense position ``0 .. size-1``.

    Args:
        ids: concept ids in position order; must be unique, non-empty strings.

    Raises:
        ValueError: if an id is empty or repeated.
    """

    ids: tuple[str, ...] = ()
    _positions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positions: dict[str, int] = {}
        for pos, concept_id in enumerate(self.ids):
            if not concept_id:
                raise ValueError(f"ids[{pos}] is empty: concept ids must be non-empty strings")
            if concept_id in positions:
                raise ValueError(
                    f"ids[{pos}] repeats {concept_id!r}: each concept id may appear only once"
                )
            positions[concept_id] = pos
        object.__setattr__(self, "_positions", positions)

    @property
    def size(self) -> int:
        """Number of concepts in the index."""
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self._positions

    def position(self, concept_id: str) -> int:
        """Position of ``concept_id``.

        Raises:
            KeyError: if the concept is not in the index (extend the index first).
        """
        try:
            return self._positions[concept_id]
        except KeyError:
            raise KeyError(
                f"concept {concept_id!r} is not in the index: call ConceptIndex.extended first"
            ) from None

    def positions(self, concept_ids: Sequence[str]) -> NDArray[np.int64]:
        """Positions of ``concept_ids`` in the given order (int64 array, same length)."""
        return np.fromiter(
            (self.position(c) for c in concept_ids), dtype=np.int64, count=len(concept_ids)
        )

    def known_positions(self, concept_ids: Sequence[str]) -> tuple[NDArray[np.int64], list[int]]:
        """Positions of the ids the index knows, and which input slots they came from.

        Unknown ids are skipped: a cue may mention concepts the graph has never seen, and those
        can contribute nothing to its dynamics.
        """
        found: list[int] = []
        slots: list[int] = []
        for slot, concept_id in enumerate(concept_ids):
            pos = self._positions.get(concept_id)
            if pos is not None:
                found.append(pos)
                slots.append(slot)
        return np.asarray(found, dtype=np.int64), slots

    def extended(self, concept_ids: Iterable[str]) -> ConceptIndex:
        """A new index holding these ids plus every id not yet known, appended in first-seen order.

        Returns ``self`` when nothing is new, so callers can test ``is`` to skip a graph resize.
        """
        new: list[str] = []
        seen = set(self._positions)
        for concept_id in concept_ids:
            if concept_id not in seen:
                seen.add(concept_id)
                new.append(concept_id)
        if not new:
            return self
        return ConceptIndex(self.ids + tuple(new))

    @classmethod
    def of_size(cls, n: int, prefix: str = "concept:") -> ConceptIndex:
        """An index of ``n`` synthetic ids ``prefix0 .. prefix{n-1}`` (for planted data).

        Raises:
            ValueError: if ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"n={n} is negative: pass the number of concepts (>= 0)")
        return cls(tuple(f"{prefix}{i}" for i in range(n)))
