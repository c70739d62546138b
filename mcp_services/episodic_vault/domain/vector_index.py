"""The vector index of the LTM tier: faiss HNSW over unit-normalised embeddings (cosine).

Every stored episode with a non-zero embedding is in it, keyed by its seq; tiers are a filter.
HNSW cannot delete, so a deleted episode's label is a tombstone that every search excludes
through an IDSelectorBitmap (no ghosts); tombstones are dropped when the index is rebuilt at start
once they exceed a third of it.

New vectors are staged and added in batches by a background thread (inserting into HNSW is the
slow part of a put); a staged vector is already searchable, exactly, so a put is visible to Search
as soon as it is acknowledged. Staged vectors sit in one contiguous float32 buffer (no per-vector
Python objects), so a search scores all of them with one matrix-vector product.

Persistence, beside the data: <dir>/index.faiss (faiss's own format), <dir>/labels.npy (per label
the episode's seq, -1 for a tombstone, and a 63-bit key from its content hash, so a vector is never
matched to another episode that reused a seq in a recreated store) and <dir>/manifest.json
(dimension, M, the store it belongs to and the SHA-256 of both files), each written to a temporary
file and renamed, manifest last. A missing, corrupt, foreign or differently shaped index is rebuilt
from the backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import structlog

from mcp_services.episodic_vault.settings import VaultIndexConfig

log = structlog.get_logger(__name__)

FORMAT = 1
F32 = npt.NDArray[np.float32]
# Vectors added to HNSW per lock hold: a search waits at most for one such batch. Measured in bare
# faiss on one core at M 32, d 384, 100k vectors: 46 CPU-s at efConstruction 64 (~0.5 ms a vector,
# ~60 ms a batch), 215 at 200 (~2 ms a vector, ~0.3 s a batch).
ADD_BATCH = 128


def normalised(v: npt.ArrayLike) -> F32 | None:
    """v / |v| as float32, or None for a zero (unsearchable) vector."""
    a = np.asarray(v, np.float32)
    norm = float(np.linalg.norm(a))
    if norm == 0 or not np.isfinite(norm):
        return None
    return (a / norm).astype(np.float32)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file only takes space
        raise


class VectorIndex:
    """Thread-safe. Labels are faiss's sequential ids; `label_seq[label]` is the episode's seq and
    `label_key[label]` its content key (content_key()).

    Locks: `_lock` guards the HNSW graph and the label columns; `_pending_lock` guards the staging
    buffer. Whoever takes both takes `_lock` first. The seq -> label map changes only under both.
    """

    def __init__(self, dim: int, cfg: VaultIndexConfig, path: Path | None, store_id: str) -> None:
        self.dim = dim
        self._cfg = cfg
        self.path = path
        self._store_id = store_id
        self._lock = threading.Lock()
        # Staging has its own lock so a put never waits for an HNSW insertion batch.
        self._pending_lock = threading.Lock()
        # Label numbers change only in a compaction, and compactions do not overlap.
        self._compact_lock = threading.Lock()
        self._index = self._new_index()
        # Label columns, grown by doubling; the first _n rows are used.
        self._n = 0
        self._label_seq = np.zeros(0, np.int64)
        self._label_key = np.zeros(0, np.int64)
        self._seq_label: dict[int, int] = {}
        # The staging buffer: rows [_head, _tail) are staged, in staging order; a removed one
        # has seq -1. _staged maps a staged seq to its row.
        self._stage_vec = np.zeros((0, dim), np.float32)
        self._stage_seq = np.zeros(0, np.int64)
        self._stage_key = np.zeros(0, np.int64)
        self._head = 0
        self._tail = 0
        self._staged: dict[int, int] = {}
        self._dirty = False
        self.loaded_from_disk = False
        self.rebuild_reason = ""
        faiss.omp_set_num_threads(cfg.threads)

    def _new_index(self) -> Any:
        index = faiss.IndexHNSWFlat(self.dim, self._cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self._cfg.ef_construction
        index.hnsw.efSearch = self._cfg.ef_search
        return index

    # -- persistence -------------------------------------------------------------------------
    def _manifest(self, index_sha: str, labels_sha: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dim": self.dim,
            "hnsw_m": self._cfg.hnsw_m,
            "metric": "cosine",
            "store": self._store_id,
            "index_sha256": index_sha,
            "labels_sha256": labels_sha,
        }

    def load(self) -> dict[int, int]:
        """Read the persisted index; seq -> content key of what it holds (empty, with
        rebuild_reason set, when there is none usable: the caller then adds every vector)."""
        if self.path is None:
            self.rebuild_reason = "no index directory (nothing persists)"
            return {}
        try:
            manifest = json.loads((self.path / "manifest.json").read_text())
            labels_bytes = (self.path / "labels.npy").read_bytes()
            # Hashed and read from the file, never held as bytes beside the index it becomes.
            index_file = self.path / "index.faiss"
            expected = self._manifest(_sha256_file(index_file), _sha256(labels_bytes))
            if manifest != expected:
                diff = sorted(k for k in expected if manifest.get(k) != expected[k])
                raise ValueError(f"manifest differs in {diff}")
            index = faiss.read_index(str(index_file))
            labels = np.frombuffer(labels_bytes, np.int64).reshape(-1, 2).copy()
            if index.ntotal != len(labels) or index.d != self.dim:
                raise ValueError("index and labels disagree")
        except FileNotFoundError:
            self.rebuild_reason = "no persisted index"
            return {}
        except (ValueError, RuntimeError, OSError) as exc:
            self.rebuild_reason = f"persisted index unusable ({exc})"
            log.warning("vault_index_rebuild", path=str(self.path), reason=self.rebuild_reason)
            return {}
        index.hnsw.efSearch = self._cfg.ef_search  # type: ignore[attr-defined]
        with self._lock, self._pending_lock:
            self._index = index
            self._n = len(labels)
            self._label_seq = labels[:, 0].copy()
            self._label_key = labels[:, 1].copy()
            self._seq_label = {int(s): i for i, s in enumerate(self._label_seq) if s >= 0}
            held = {s: int(self._label_key[i]) for s, i in self._seq_label.items()}
        self.loaded_from_disk = True
        return held

    def save(self) -> bool:
        """Persist if changed since the last save; True when written."""
        if self.path is None:
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / "index.faiss.tmp"
        with self._lock:
            if not self._dirty:
                return False
            # Straight to the file: serialising to bytes first held two more copies of the
            # index in memory (~180 MB each at 100k vectors of 384 dimensions).
            try:
                faiss.write_index(self._index, str(tmp))
            except BaseException:
                tmp.unlink(missing_ok=True)  # a half-written file only takes space
                raise
            n = self._n
            labels_bytes = np.stack([self._label_seq[:n], self._label_key[:n]], axis=1).tobytes()
            self._dirty = False
        try:
            _fsync(tmp)
            index_sha = _sha256_file(tmp)
            os.replace(tmp, self.path / "index.faiss")
            _write_atomic(self.path / "labels.npy", labels_bytes)
            manifest = self._manifest(index_sha, _sha256(labels_bytes))
            _write_atomic(self.path / "manifest.json", json.dumps(manifest, indent=1).encode())
        except BaseException:
            # Not saved: try again next time (a mismatched manifest makes load() rebuild).
            tmp.unlink(missing_ok=True)
            self._dirty = True
            raise
        return True

    def compact_if_sparse(self, max_dead_fraction: float = 1 / 3) -> bool:
        """Rebuild without tombstones when they exceed the fraction of the labels; True when
        rebuilt. HNSW cannot delete, so this is how deleted episodes' vectors and links leave
        memory. The new graph is built from a snapshot without holding the index (searches and
        flushes go on); what was added or removed meanwhile is applied at the swap. One
        compaction at a time: a second caller waits, then finds nothing to do."""
        with self._compact_lock:
            return self._compact(max_dead_fraction)

    def _compact(self, max_dead_fraction: float) -> bool:
        with self._lock:
            n0 = self._n
            if n0 == 0 or n0 - len(self._seq_label) <= max_dead_fraction * n0:
                return False
            live0 = np.flatnonzero(self._label_seq[:n0] >= 0)
            if n0 == 0 or (n0 - len(live0)) <= max_dead_fraction * n0:
                return False
            vectors = self._index.reconstruct_batch(live0)
        index = self._new_index()
        for start in range(0, len(live0), 4096):
            index.add(vectors[start : start + 4096])
        del vectors
        with self._lock:
            # Labelled since the snapshot: add them too. Removed since: tombstone them.
            n1 = self._n
            later = n0 + np.flatnonzero(self._label_seq[n0:n1] >= 0)
            if len(later):
                index.add(self._index.reconstruct_batch(later))
            keep = np.concatenate([live0, later])
            seqs = self._label_seq[keep].copy()
            keys = self._label_key[keep].copy()
            with self._pending_lock:
                self._index = index
                self._n = len(keep)
                self._label_seq, self._label_key = seqs, keys
                self._seq_label = {int(s): i for i, s in enumerate(seqs) if s >= 0}
            self._dirty = True
        log.info("vault_index_compacted", vectors=len(keep), labels_before=n1)
        return True

    def tombstone_fraction(self) -> float:
        with self._lock:
            return 0.0 if self._n == 0 else 1.0 - len(self._seq_label) / self._n

    # -- writes ------------------------------------------------------------------------------
    def stage(self, seq: int, key: int, vector: F32) -> None:
        """Make `vector` (unit length) searchable as `seq`; HNSW insertion happens in flush()."""
        self.stage_many(
            np.array([seq], np.int64), np.array([key], np.int64), np.asarray(vector)[None, :]
        )

    def stage_many(
        self, seqs: npt.NDArray[np.int64], keys: npt.NDArray[np.int64], vectors: F32
    ) -> None:
        """stage() for rows of `vectors` (unit length); a seq already held is left as it is."""
        with self._pending_lock:
            fresh = [
                i
                for i, s in enumerate(seqs.tolist())
                if s not in self._seq_label and s not in self._staged
            ]
            if not fresh:
                return
            m = len(fresh)
            self._reserve_staging(m)
            rows = slice(self._tail, self._tail + m)
            self._stage_vec[rows] = vectors[fresh]
            self._stage_seq[rows] = seqs[fresh]
            self._stage_key[rows] = keys[fresh]
            for j, s in enumerate(seqs[fresh].tolist()):
                self._staged[s] = self._tail + j
            self._tail += m

    def _reserve_staging(self, m: int) -> None:
        """Room for m more staged rows (caller holds _pending_lock). Rows keep their order when
        moved to the front, which flush() relies on."""
        cap = len(self._stage_seq)
        if self._tail + m <= cap:
            return
        live = self._tail - self._head
        if self._head > 0 and live + m <= cap // 2:
            src = slice(self._head, self._tail)
            self._stage_vec[:live] = self._stage_vec[src]
            self._stage_seq[:live] = self._stage_seq[src]
            self._stage_key[:live] = self._stage_key[src]
        else:
            new_cap = max(ADD_BATCH, 2 * (live + m))
            vec = np.empty((new_cap, self.dim), np.float32)
            seq = np.empty(new_cap, np.int64)
            key = np.empty(new_cap, np.int64)
            vec[:live] = self._stage_vec[self._head : self._tail]
            seq[:live] = self._stage_seq[self._head : self._tail]
            key[:live] = self._stage_key[self._head : self._tail]
            self._stage_vec, self._stage_seq, self._stage_key = vec, seq, key
        self._staged = {s: i - self._head for s, i in self._staged.items()}
        self._head, self._tail = 0, live

    def _release_staging(self) -> None:
        """Give an emptied, large staging buffer back (caller holds _pending_lock)."""
        if self._head == self._tail:
            self._head = self._tail = 0
            if len(self._stage_seq) > 8 * ADD_BATCH:
                self._stage_vec = np.zeros((0, self.dim), np.float32)
                self._stage_seq = np.zeros(0, np.int64)
                self._stage_key = np.zeros(0, np.int64)

    def flush(self, limit: int | None = None) -> int:
        """Move staged vectors into HNSW, ADD_BATCH per lock hold; how many moved."""
        moved = 0
        while limit is None or moved < limit:
            with self._lock:
                with self._pending_lock:
                    take = min(ADD_BATCH, self._tail - self._head)
                    if take == 0:
                        self._release_staging()
                        break
                    rows = slice(self._head, self._head + take)
                    seqs = self._stage_seq[rows].copy()
                    keys = self._stage_key[rows].copy()
                    keep = seqs >= 0
                    vecs = self._stage_vec[rows][keep]  # a copy: staging may move meanwhile
                seqs, keys = seqs[keep], keys[keep]
                # The slow part, with only _lock held: puts keep staging meanwhile. Removals
                # take _lock, so none of these rows can be removed before they are labelled.
                if len(seqs):
                    self._index.add(vecs)
                with self._pending_lock:
                    base = self._n
                    self._grow_labels(base + len(seqs))
                    self._label_seq[base : base + len(seqs)] = seqs
                    self._label_key[base : base + len(seqs)] = keys
                    self._n = base + len(seqs)
                    for i, s in enumerate(seqs.tolist()):
                        self._seq_label[s] = base + i
                        del self._staged[s]
                    # New stagings only append, and a move keeps order: these are still the
                    # first `take` staged rows.
                    self._head += take
                    self._dirty = True
            moved += take
        return moved

    def _grow_labels(self, n: int) -> None:
        if n <= len(self._label_seq):
            return
        cap = max(1024, 2 * n)
        for name in ("_label_seq", "_label_key"):
            old = getattr(self, name)
            new = np.empty(cap, np.int64)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def remove(self, seq: int) -> None:
        self.remove_many([seq])

    def remove_many(self, seqs: Iterable[int]) -> int:
        """Drop the episodes' vectors: staged ones at once, indexed ones become tombstones
        (compact_if_sparse() reclaims them); how many were held."""
        held = 0
        with self._lock, self._pending_lock:
            for seq in seqs:
                row = self._staged.pop(seq, None)
                if row is not None:
                    self._stage_seq[row] = -1
                    held += 1
                label = self._seq_label.pop(seq, None)
                if label is not None:
                    self._label_seq[label] = -1
                    self._dirty = True
                    held += 1
        return held

    def keep_only(self, valid: dict[int, int]) -> int:
        """Tombstone every label whose seq is not in `valid` (seq -> content key) or whose key
        differs (reconciling a loaded index with the store); how many."""
        with self._lock:
            gone = [
                s for s, i in self._seq_label.items() if valid.get(s) != int(self._label_key[i])
            ]
        return self.remove_many(gone)

    # -- reads -------------------------------------------------------------------------------
    def search(
        self, query: F32, k: int, allowed_seqs: npt.NDArray[np.int64] | None
    ) -> tuple[list[tuple[int, float]], bool]:
        """The k (seq, cosine) nearest `query` (unit length), best first, among `allowed_seqs`
        (None: all), and whether the answer is exact."""
        with self._lock:
            n = self._n
            label_seq = self._label_seq[:n]
            if allowed_seqs is None:
                allowed_labels = label_seq >= 0
            else:
                allowed_labels = np.isin(label_seq, allowed_seqs) & (label_seq >= 0)
            count = int(allowed_labels.sum())
            hits: list[tuple[int, float]] = []
            exact = count <= self._cfg.exact_max_candidates
            if count > 0 and exact:
                labels = np.flatnonzero(allowed_labels).astype(np.int64)
                sims = self._index.reconstruct_batch(labels) @ query
                top = _top(sims, k)
                hits = [(int(label_seq[labels[i]]), float(sims[i])) for i in top]
            elif count > 0:
                ef = max(self._cfg.ef_search, k)
                params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
                if count < n:  # a filter or tombstones: only allowed labels may be returned
                    # Both stay referenced here until the search returns (faiss keeps pointers).
                    bitmap = np.packbits(allowed_labels, bitorder="little")
                    sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
                    params.sel = sel
                dist, lab = self._index.search(query[None, :], k, params=params)
                hits = [
                    (int(label_seq[la]), float(d))
                    for la, d in zip(lab[0], dist[0], strict=True)
                    if la >= 0
                ]
            # Staged vectors, scored exactly in one product (under _lock, so none is half-way
            # into HNSW).
            with self._pending_lock:
                rows = slice(self._head, self._tail)
                seqs = self._stage_seq[rows]
                ok = seqs >= 0
                if allowed_seqs is not None:
                    ok &= np.isin(seqs, allowed_seqs)
                if ok.any():
                    sims = self._stage_vec[rows] @ query
                    cand = np.flatnonzero(ok)
                    top = cand[_top(sims[cand], k)]
                    hits += [(int(seqs[i]), float(sims[i])) for i in top]
        hits.sort(key=lambda h: -h[1])
        return hits[:k], exact

    def __len__(self) -> int:
        with self._lock, self._pending_lock:
            return len(self._seq_label) + len(self._staged)

    def sizes(self) -> dict[str, int]:
        """Vectors indexed, staged and tombstoned, and the index's approximate bytes."""
        with self._lock, self._pending_lock:
            labels = self._n
            live = len(self._seq_label)
            # Flat storage (4 bytes a value) plus the graph's 2*M links of level 0 (4 bytes each).
            approx = labels * (4 * self.dim + 8 * self._cfg.hnsw_m)
            return {
                "indexed": live,
                "pending": len(self._staged),
                "tombstones": labels - live,
                "bytes": approx,
            }


def _top(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Indices of the k highest scores, highest first (ties: lower index first)."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        part.sort()
        return part[np.argsort(-scores[part], kind="stable")]
    return np.argsort(-scores, kind="stable")


def set_of(seqs: npt.NDArray[np.int64]) -> set[int]:
    return {int(s) for s in seqs}


def content_key(content_hash: str) -> int:
    """A non-negative 63-bit key derived from an episode's content hash."""
    return int.from_bytes(hashlib.sha256(content_hash.encode()).digest()[:8], "big") >> 1
