"""The vector index of the LTM tier: faiss HNSW over unit-normalised embeddings (cosine).

Every stored episode with a non-zero embedding is in it, keyed by its seq; tiers are a filter.
HNSW cannot delete, so a deleted episode's label is a tombstone that every search excludes
through an IDSelectorBitmap (no ghosts); tombstones are dropped when the index is rebuilt at start
once they exceed a third of it.

New vectors are staged and added in batches by a background thread (inserting into HNSW is the
slow part of a put); a staged vector is already searchable, exactly, so a put is visible to Search
as soon as it is acknowledged.

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
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import structlog

from mcp_services.common.config_schema import VaultIndexConfig

log = structlog.get_logger(__name__)

FORMAT = 1
F32 = npt.NDArray[np.float32]
# Vectors added to HNSW per lock hold: a search waits at most for one such batch.
ADD_BATCH = 256


def normalised(v: npt.ArrayLike) -> F32 | None:
    """v / |v| as float32, or None for a zero (unsearchable) vector."""
    a = np.asarray(v, np.float32)
    norm = float(np.linalg.norm(a))
    if norm == 0 or not np.isfinite(norm):
        return None
    return (a / norm).astype(np.float32)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class VectorIndex:
    """Thread-safe. Labels are faiss's sequential ids; `label_seq[label]` is the episode's seq and
    `label_key[label]` its content key (content_key())."""

    def __init__(self, dim: int, cfg: VaultIndexConfig, path: Path | None, store_id: str) -> None:
        self.dim = dim
        self._cfg = cfg
        self.path = path
        self._store_id = store_id
        self._lock = threading.Lock()
        # Staging has its own lock so a put never waits for an HNSW insertion batch.
        self._pending_lock = threading.Lock()
        self._index = self._new_index()
        self._label_seq = np.zeros(0, np.int64)
        self._label_key = np.zeros(0, np.int64)
        self._seq_label: dict[int, int] = {}
        self._pending: dict[int, tuple[int, F32]] = {}
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
            index_bytes = (self.path / "index.faiss").read_bytes()
            labels_bytes = (self.path / "labels.npy").read_bytes()
            expected = self._manifest(_sha256(index_bytes), _sha256(labels_bytes))
            if manifest != expected:
                diff = sorted(k for k in expected if manifest.get(k) != expected[k])
                raise ValueError(f"manifest differs in {diff}")
            index = faiss.deserialize_index(np.frombuffer(index_bytes, np.uint8))
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
        with self._lock:
            self._index = index
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
        with self._lock:
            if not self._dirty:
                return False
            index_bytes = faiss.serialize_index(self._index).tobytes()
            labels_bytes = np.stack([self._label_seq, self._label_key], axis=1).tobytes()
            self._dirty = False
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / "index.faiss", index_bytes)
        _write_atomic(self.path / "labels.npy", labels_bytes)
        manifest = self._manifest(_sha256(index_bytes), _sha256(labels_bytes))
        _write_atomic(self.path / "manifest.json", json.dumps(manifest, indent=1).encode())
        return True

    def compact_if_sparse(self, max_dead_fraction: float = 1 / 3) -> bool:
        """Rebuild without tombstones when they exceed the fraction; True when rebuilt."""
        with self._lock:
            n = len(self._label_seq)
            live = np.flatnonzero(self._label_seq >= 0)
            if n == 0 or (n - len(live)) <= max_dead_fraction * n:
                return False
            vectors = self._index.reconstruct_batch(live.astype(np.int64))
            seqs = self._label_seq[live]
            self._index = self._new_index()
            self._index.add(vectors)
            self._label_seq = seqs.copy()
            self._label_key = self._label_key[live].copy()
            self._seq_label = {int(s): i for i, s in enumerate(seqs)}
            self._dirty = True
        return True

    # -- writes ------------------------------------------------------------------------------
    def stage(self, seq: int, key: int, vector: F32) -> None:
        """Make `vector` (unit length) searchable as `seq`; HNSW insertion happens in flush()."""
        with self._pending_lock:
            if seq not in self._seq_label:
                self._pending[seq] = (key, vector)

    def flush(self, limit: int | None = None) -> int:
        """Move staged vectors into HNSW, ADD_BATCH per lock hold; how many moved."""
        moved = 0
        while limit is None or moved < limit:
            with self._pending_lock:
                take = list(self._pending.items())[:ADD_BATCH]
            if not take:
                break
            with self._lock:
                seqs = np.array([s for s, _ in take], np.int64)
                keys = np.array([k for _, (k, _) in take], np.int64)
                self._index.add(np.stack([v for _, (_, v) in take]))
                base = len(self._label_seq)
                self._label_seq = np.concatenate([self._label_seq, seqs])
                self._label_key = np.concatenate([self._label_key, keys])
                with self._pending_lock:
                    for i, (s, _) in enumerate(take):
                        self._seq_label[s] = base + i
                        self._pending.pop(s, None)
                self._dirty = True
            moved += len(take)
        return moved

    def remove(self, seq: int) -> None:
        with self._lock:
            with self._pending_lock:
                self._pending.pop(seq, None)
            label = self._seq_label.pop(seq, None)
            if label is not None:
                self._label_seq[label] = -1
                self._dirty = True

    def keep_only(self, valid: dict[int, int]) -> int:
        """Tombstone every label whose seq is not in `valid` (seq -> content key) or whose key
        differs (reconciling a loaded index with the store); how many."""
        with self._lock:
            gone = [
                s for s, i in self._seq_label.items() if valid.get(s) != int(self._label_key[i])
            ]
        for s in gone:
            self.remove(s)
        return len(gone)

    # -- reads -------------------------------------------------------------------------------
    def search(
        self, query: F32, k: int, allowed_seqs: npt.NDArray[np.int64] | None
    ) -> tuple[list[tuple[int, float]], bool]:
        """The k (seq, cosine) nearest `query` (unit length), best first, among `allowed_seqs`
        (None: all), and whether the answer is exact."""
        with self._lock:
            n = len(self._label_seq)
            alive = self._label_seq >= 0
            if allowed_seqs is None:
                allowed_labels = alive
                count = int(alive.sum())
            else:
                allowed_labels = np.zeros(n, bool)
                sl = self._seq_label
                idx = [sl[s] for s in map(int, allowed_seqs) if s in sl]
                allowed_labels[np.asarray(idx, np.int64)] = True
                count = len(idx)
            allowed_set = None if allowed_seqs is None else set_of(allowed_seqs)
            with self._pending_lock:
                pending = [
                    (s, v)
                    for s, v in self._pending.items()
                    if allowed_set is None or s in allowed_set
                ]
            hits: list[tuple[int, float]] = []
            exact = count <= self._cfg.exact_max_candidates
            if count > 0 and exact:
                labels = np.flatnonzero(allowed_labels).astype(np.int64)
                vecs = self._index.reconstruct_batch(labels)
                sims = vecs @ query
                top = np.argsort(-sims, kind="stable")[:k]
                hits = [(int(self._label_seq[labels[i]]), float(sims[i])) for i in top]
            elif count > 0:
                bitmap = np.packbits(allowed_labels, bitorder="little")
                sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
                ef = max(self._cfg.ef_search, k)
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)  # type: ignore[attr-defined]
                dist, lab = self._index.search(query[None, :], k, params=params)
                hits = [
                    (int(self._label_seq[la]), float(d))
                    for la, d in zip(lab[0], dist[0], strict=True)
                    if la >= 0
                ]
        for s, (_, v) in pending:
            hits.append((s, float(v @ query)))
        hits.sort(key=lambda h: -h[1])
        return hits[:k], exact

    def __len__(self) -> int:
        with self._lock, self._pending_lock:
            return len(self._seq_label) + len(self._pending)

    def sizes(self) -> dict[str, int]:
        """Vectors indexed, staged and tombstoned, and the index's approximate bytes."""
        with self._lock, self._pending_lock:
            labels = len(self._label_seq)
            live = len(self._seq_label)
            # Flat storage (4 bytes a value) plus the graph's 2*M links of level 0 (4 bytes each).
            approx = labels * (4 * self.dim + 8 * self._cfg.hnsw_m)
            return {
                "indexed": live,
                "pending": len(self._pending),
                "tombstones": labels - live,
                "bytes": approx,
            }


def set_of(seqs: npt.NDArray[np.int64]) -> set[int]:
    return {int(s) for s in seqs}


def content_key(content_hash: str) -> int:
    """A non-negative 63-bit key derived from an episode's content hash."""
    return int.from_bytes(hashlib.sha256(content_hash.encode()).digest()[:8], "big") >> 1
