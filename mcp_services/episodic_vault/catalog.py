"""The vault's in-process catalog: a few columns of every stored episode, for filters, Recall and
pruning, plus the inverted concept index.

Rebuilt from the backend at start (one Scan) and kept in step by the store on every write, so it
never holds an episode the backend does not (what it holds is light: no payload, no embedding).
Rows are dense slots handed out in storage order and never reused; a deleted episode's row is dead.

Recall score (RecallRequest's contract): for a cue c and an episode e with concept strengths
(a trace counts each concept at its strongest frame),
    score = sum_k c_k e_k / (|c| |e|)   over concepts k in both,
a cosine over concept strengths, in [0, 1] since strengths are >= 0.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mcp_services.episodic_vault.model import Episode, EpisodeFilter, Tier

_START = 1024


def concept_strengths(ep: Episode) -> dict[str, float]:
    """Each concept of the episode at its strongest (over the activation and every frame)."""
    out: dict[str, float] = {}
    acts = [ep.activation, *(f.activation for f in ep.trace)]
    for act in acts:
        for cid, s in zip(act.concept_ids, act.strengths, strict=True):
            if s > out.get(cid, 0.0):
                out[cid] = float(s)
    return out


@dataclass(frozen=True, slots=True)
class RecallMatch:
    row: int
    score: float
    # Shared concepts, largest contribution (cue strength x episode strength) first.
    matched: tuple[str, ...]


class Catalog:
    """Not thread-safe by itself: the store calls it under its lock."""

    def __init__(self) -> None:
        self.n = 0
        self.ids: list[str] = []
        self.tags: list[frozenset[str]] = []
        self._row_of: dict[str, int] = {}
        self._row_of_seq: dict[int, int] = {}
        self._sources: dict[str, int] = {}
        self._tag_rows: dict[str, set[int]] = {}
        self._postings: dict[str, dict[int, float]] = {}
        self._concepts: list[tuple[str, ...]] = []
        self.seq = np.zeros(_START, np.int64)
        self.ts = np.zeros(_START, np.int64)
        self.stored = np.zeros(_START, np.int64)
        self.energy = np.zeros(_START, np.float64)
        self.ref_count = np.zeros(_START, np.int64)
        self.size = np.zeros(_START, np.int64)
        self.source = np.zeros(_START, np.int32)
        self.tier = np.zeros(_START, np.int8)
        self.consolidated = np.zeros(_START, bool)
        self.alive = np.zeros(_START, bool)
        self.in_stm = np.zeros(_START, bool)
        self.access = np.zeros(_START, np.int64)
        self.cnorm = np.zeros(_START, np.float64)
        self.has_vector = np.zeros(_START, bool)
        self.live = 0

    _COLUMNS = (
        "seq", "ts", "stored", "energy", "ref_count", "size", "source", "tier", "consolidated",
        "alive", "in_stm", "access", "cnorm", "has_vector",
    )  # fmt: skip

    def _grow(self) -> None:
        for name in self._COLUMNS:
            col = getattr(self, name)
            new = np.zeros(len(col) * 2, col.dtype)
            new[: len(col)] = col
            setattr(self, name, new)

    # -- writes ------------------------------------------------------------------------------
    def add(self, ep: Episode, *, has_vector: bool) -> int:
        """The row of `ep`, added unless its id is already here."""
        row = self._row_of.get(ep.id)
        if row is not None:
            return row
        if self.n == len(self.seq):
            self._grow()
        row = self.n
        self.n += 1
        self.ids.append(ep.id)
        self.tags.append(frozenset(ep.tags))
        self._row_of[ep.id] = row
        self._row_of_seq[ep.seq] = row
        self.seq[row] = ep.seq
        self.ts[row] = ep.timestamp_ms
        self.stored[row] = ep.stored_ms
        self.energy[row] = ep.energy
        self.ref_count[row] = ep.ref_count
        self.size[row] = ep.size_bytes
        self.source[row] = self._sources.setdefault(ep.source.type, len(self._sources))
        # A hot episode (tier STM) is durable in MTM: the column holds its durable tier.
        hot = ep.tier is Tier.STM
        self.tier[row] = int(Tier.MTM if hot else ep.tier)
        self.in_stm[row] = hot
        self.consolidated[row] = ep.consolidated
        self.alive[row] = True
        self.has_vector[row] = has_vector
        for tag in ep.tags:
            self._tag_rows.setdefault(tag, set()).add(row)
        strengths = concept_strengths(ep)
        for cid, s in strengths.items():
            if s > 0:
                self._postings.setdefault(cid, {})[row] = s
        self._concepts.append(tuple(strengths))
        self.cnorm[row] = math.sqrt(sum(s * s for s in strengths.values()))
        self.live += 1
        return row

    def remove(self, episode_id: str) -> int | None:
        """Forget the episode; its row, or None when it was not here."""
        row = self._row_of.pop(episode_id, None)
        if row is None:
            return None
        del self._row_of_seq[int(self.seq[row])]
        self.alive[row] = False
        self.in_stm[row] = False
        for tag in self.tags[row]:
            rows = self._tag_rows[tag]
            rows.discard(row)
            if not rows:
                del self._tag_rows[tag]
        for cid in self._concepts[row]:
            post = self._postings.get(cid)
            if post is not None:
                post.pop(row, None)
                if not post:
                    del self._postings[cid]
        self._concepts[row] = ()
        self.live -= 1
        return row

    def mark_consolidated(self, episode_ids: Iterable[str]) -> list[int]:
        """Move the episodes to LTM; the rows that changed."""
        changed = []
        for episode_id in episode_ids:
            row = self._row_of.get(episode_id)
            if row is not None and not self.consolidated[row]:
                self.consolidated[row] = True
                self.tier[row] = int(Tier.LTM)
                changed.append(row)
        return changed

    # -- reads -------------------------------------------------------------------------------
    def row(self, episode_id: str) -> int | None:
        return self._row_of.get(episode_id)

    def row_of_seq(self, seq: int) -> int | None:
        return self._row_of_seq.get(seq)

    def mask(self, flt: EpisodeFilter, tier: Tier) -> npt.NDArray[np.bool_]:
        """Rows that are alive and pass the filter and tier (UNSPECIFIED: any tier)."""
        n = self.n
        m = self.alive[:n].copy()
        if flt.since_ms is not None:
            m &= self.ts[:n] >= flt.since_ms
        if flt.until_ms is not None:
            m &= self.ts[:n] < flt.until_ms
        if flt.min_energy > 0:
            m &= self.energy[:n] >= flt.min_energy
        if flt.source_type:
            code = self._sources.get(flt.source_type)
            if code is None:
                return np.zeros(n, bool)
            m &= self.source[:n] == code
        for tag in flt.tags:
            rows = self._tag_rows.get(tag)
            if not rows:
                return np.zeros(n, bool)
            tm = np.zeros(n, bool)
            tm[np.fromiter(rows, np.int64, len(rows))] = True
            m &= tm
        if tier is Tier.STM:
            m &= self.in_stm[:n]
        elif tier is Tier.MTM:
            m &= (self.tier[:n] == int(Tier.MTM)) & ~self.in_stm[:n]
        elif tier is Tier.LTM:
            m &= self.tier[:n] == int(Tier.LTM)
        return m

    def recall(
        self, cue: Mapping[str, float], k: int, allowed: npt.NDArray[np.bool_] | None
    ) -> list[RecallMatch]:
        """The k rows with the highest cue overlap (module docstring), best first; ties by row
        (older first). Rows outside `allowed` (when given) are skipped."""
        cue_norm = math.sqrt(sum(s * s for s in cue.values()))
        if cue_norm == 0:
            return []
        scores: dict[int, float] = {}
        for cid, w in cue.items():
            post = self._postings.get(cid)
            if not post or w <= 0:
                continue
            for row, s in post.items():
                scores[row] = scores.get(row, 0.0) + w * s
        if allowed is not None:
            scores = {r: v for r, v in scores.items() if allowed[r]}
        best = heapq.nlargest(k, scores.items(), key=lambda rv: (rv[1] / self.cnorm[rv[0]], -rv[0]))
        out = []
        for row, dot in best:
            contrib = [
                (cue[cid] * self._postings[cid][row], cid)
                for cid in self._concepts[row]
                if cid in cue and row in self._postings.get(cid, {})
            ]
            contrib.sort(key=lambda t: (-t[0], t[1]))
            score = min(1.0, dot / (cue_norm * float(self.cnorm[row])))
            out.append(RecallMatch(row, score, tuple(c for _, c in contrib)))
        return out

    def concept_count(self) -> int:
        return len(self._postings)
