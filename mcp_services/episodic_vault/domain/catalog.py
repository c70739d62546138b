"""The vault's in-process catalog: a few columns of every stored episode, for filters, Recall and
pruning, plus the inverted concept and tag indexes.

Rebuilt from the backend at start (one Scan) and kept in step by the store on every write, so it
never holds an episode the backend does not (what it holds is light: no payload, no embedding).
Rows are dense slots handed out in storage order; a deleted episode's row is dead until
compact_if_sparse() renumbers the live rows (in order), which the store does once dead rows are a
third of them, so a store whose size is bounded has a bounded catalog.

The concept and tag indexes are postings of growable numpy arrays (row, strength): 12 bytes an
entry, where a dict entry with its int and float objects costs ~90. Dead rows stay in them until
compaction and are skipped by the alive column. Rows in a posting ascend (rows are handed out in
order and compaction keeps it), so a row is found in one by bisection.

Recall score (RecallRequest's contract): for a cue c and an episode e with concept strengths
(a trace counts each concept at its strongest frame),
    score = sum_k c_k e_k / (|c| |e|)   over concepts k in both,
a cosine over concept strengths, in [0, 1] since strengths are >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mcp_services.episodic_vault.domain.model import Episode, EpisodeFilter, Tier

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


class _Posting:
    """Rows (ascending) with a value each, in arrays grown by doubling."""

    __slots__ = ("n", "rows", "vals")

    def __init__(self, cap: int = 4) -> None:
        self.n = 0
        self.rows = np.zeros(cap, np.int32)
        self.vals = np.zeros(cap, np.float64)

    def append(self, row: int, val: float) -> None:
        if self.n == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros(self.n, np.int32)])
            self.vals = np.concatenate([self.vals, np.zeros(self.n, np.float64)])
        self.rows[self.n] = row
        self.vals[self.n] = val
        self.n += 1

    def value(self, row: int) -> float | None:
        i = int(np.searchsorted(self.rows[: self.n], row))
        return float(self.vals[i]) if i < self.n and self.rows[i] == row else None

    def renumbered(self, remap: npt.NDArray[np.int64]) -> _Posting | None:
        """The posting with rows mapped through `remap` (-1: dropped); None when empty."""
        new_rows = remap[self.rows[: self.n]]
        keep = new_rows >= 0
        if not keep.any():
            return None
        out = _Posting(0)
        out.rows = new_rows[keep].astype(np.int32)
        out.vals = self.vals[: self.n][keep].copy()
        out.n = len(out.rows)
        return out


class Catalog:
    """Not thread-safe by itself: the store calls it under its lock."""

    def __init__(self) -> None:
        self.n = 0
        self.ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._row_of_seq: dict[int, int] = {}
        self._sources: dict[str, int] = {}
        self._tag_rows: dict[str, _Posting] = {}
        self._postings: dict[str, _Posting] = {}
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
            posting = self._tag_rows.get(tag)
            if posting is None:
                posting = self._tag_rows[tag] = _Posting()
            posting.append(row, 1.0)
        strengths = concept_strengths(ep)
        for cid, s in strengths.items():
            if s > 0:
                posting = self._postings.get(cid)
                if posting is None:
                    posting = self._postings[cid] = _Posting()
                posting.append(row, s)
        self.cnorm[row] = math.sqrt(sum(s * s for s in strengths.values()))
        self.live += 1
        return row

    def remove(self, episode_id: str) -> int | None:
        """Forget the episode; its row, or None when it was not here. The row stays (dead) in
        the postings until compaction."""
        row = self._row_of.pop(episode_id, None)
        if row is None:
            return None
        del self._row_of_seq[int(self.seq[row])]
        self.alive[row] = False
        self.in_stm[row] = False
        self.ids[row] = ""
        self.live -= 1
        return row

    def compact_if_sparse(self, max_dead_fraction: float = 1 / 3) -> bool:
        """Renumber the live rows (keeping their order) when dead rows exceed the fraction;
        True when it did. Row numbers handed out before are void afterwards."""
        n = self.n
        if n - self.live <= max(64, max_dead_fraction * n):
            return False
        keep = np.flatnonzero(self.alive[:n])
        remap = np.full(n, -1, np.int64)
        remap[keep] = np.arange(len(keep))
        for name in self._COLUMNS:
            col = getattr(self, name)
            new = np.zeros(max(_START, 2 * len(keep)), col.dtype)
            new[: len(keep)] = col[keep]
            setattr(self, name, new)
        self.n = len(keep)
        self.ids = [self.ids[r] for r in keep.tolist()]
        self._row_of = {i: r for r, i in enumerate(self.ids)}
        self._row_of_seq = {int(s): r for r, s in enumerate(self.seq[: self.n])}
        for index in (self._postings, self._tag_rows):
            for key, posting in list(index.items()):
                new_posting = posting.renumbered(remap)
                if new_posting is None:
                    del index[key]
                else:
                    index[key] = new_posting
        return True

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
            posting = self._tag_rows.get(tag)
            if posting is None:
                return np.zeros(n, bool)
            tm = np.zeros(n, bool)
            tm[posting.rows[: posting.n]] = True
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
        if cue_norm == 0 or self.n == 0:
            return []
        dots = np.zeros(self.n, np.float64)
        for cid, w in cue.items():
            posting = self._postings.get(cid)
            if posting is None or w <= 0:
                continue
            dots[posting.rows[: posting.n]] += w * posting.vals[: posting.n]
        ok = (dots > 0) & self.alive[: self.n]
        if allowed is not None:
            ok &= allowed[: self.n]
        rows = np.flatnonzero(ok)
        ratio = dots[rows] / self.cnorm[rows]
        best = rows[np.lexsort((rows, -ratio))[:k]]
        out = []
        for row in best.tolist():
            contrib = []
            for cid, w in cue.items():
                posting = self._postings.get(cid)
                v = posting.value(row) if posting is not None else None
                if v is not None:
                    contrib.append((w * v, cid))
            contrib.sort(key=lambda t: (-t[0], t[1]))
            score = min(1.0, float(dots[row]) / (cue_norm * float(self.cnorm[row])))
            out.append(RecallMatch(row, score, tuple(c for _, c in contrib)))
        return out

    def concept_count(self) -> int:
        """Concepts that at least one live episode holds."""
        alive = self.alive[: self.n]
        return sum(bool(alive[p.rows[: p.n]].any()) for p in self._postings.values())
