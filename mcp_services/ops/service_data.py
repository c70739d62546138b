"""Read the services' persisted data for checking, strictly read-only.

The services' own loaders are not used on purpose: the graph store deletes stale temporary files
when it opens a directory (which would break a live scheduler's commit in progress) and the vault
and learner loaders repair or refuse what they find, while a check must report it. Each reader
here opens files for reading only, validates every rule the writer guarantees, and returns what it
found with a list of problems (each naming the file, what is wrong and what the service does
about it), never raising for bad data.

The layouts are the writers': mcp_services/episodic_vault/domain/vector_index.py (index.faiss,
labels.npy, manifest.json), mcp_services/sleep_scheduler/adapters/graph_store.py
(v<12 digits>.npz) and mcp_services/koopman_learner/adapters/state_store.py (state.npz).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

GRAPH_FILE = re.compile(r"^v(\d{12})\.npz$")
_GRAPH_ARRAYS = (
    "header", "ids_blob", "ids_offsets", "biases", "edge_i", "edge_j", "edge_w",
    "proto_indptr", "proto_indices", "proto_support",
)  # fmt: skip
LEARNER_FILE = "state.npz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_digest(arrays: dict[str, NDArray[Any]]) -> str:
    """A digest of named arrays (names, dtypes, shapes and bytes), independent of the zip
    container they came in."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _load_npz(path: Path) -> dict[str, NDArray[Any]]:
    with np.load(path, allow_pickle=False) as z:
        return {name: np.array(z[name]) for name in z.files}


# -- the vault's vector index ----------------------------------------------------------------------


@dataclass
class IndexFiles:
    """The persisted vector index: seq -> content key of every live label (tombstones left out)."""

    path: Path
    present: bool = False
    labels: dict[int, int] = field(default_factory=dict)
    tombstones: int = 0
    vectors: int = 0
    saved_at: float = 0.0  # the manifest's mtime: the index holds nothing stored after it
    problems: list[str] = field(default_factory=list)


def read_index(path: Path, dim: int, hnsw_m: int, store_id: str) -> IndexFiles:
    """The index persisted in ``path`` for a store with this dimension, M and identity."""
    out = IndexFiles(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        return out
    out.present = True
    out.saved_at = manifest_path.stat().st_mtime
    rebuilt = "the vault rebuilds it from the backend at its next start"
    try:
        manifest = json.loads(manifest_path.read_text())
        index_bytes = (path / "index.faiss").read_bytes()
        labels_bytes = (path / "labels.npy").read_bytes()
    except (OSError, ValueError) as exc:
        out.problems.append(f"vector index {path}: unreadable ({exc}); {rebuilt}")
        return out
    expected = {
        "dim": dim,
        "hnsw_m": hnsw_m,
        "store": store_id,
        "index_sha256": _sha256(index_bytes),
        "labels_sha256": _sha256(labels_bytes),
    }
    wrong = sorted(k for k, v in expected.items() if manifest.get(k) != v)
    if wrong:
        out.problems.append(
            f"vector index {path}: manifest disagrees with the files or the config in {wrong} "
            f"(a file was changed or belongs to another store); {rebuilt}"
        )
        return out
    if len(labels_bytes) % 16:
        out.problems.append(f"vector index {path}: labels.npy is not (n, 2) int64; {rebuilt}")
        return out
    labels = np.frombuffer(labels_bytes, np.int64).reshape(-1, 2)
    try:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, np.uint8))
    except RuntimeError as exc:
        out.problems.append(f"vector index {path}: index.faiss does not load ({exc}); {rebuilt}")
        return out
    out.vectors = int(index.ntotal)
    if index.ntotal != len(labels) or index.d != dim:
        out.problems.append(
            f"vector index {path}: {index.ntotal} vectors of dimension {index.d} but "
            f"{len(labels)} labels for dimension {dim}; {rebuilt}"
        )
        return out
    live = labels[:, 0] >= 0
    out.tombstones = int((~live).sum())
    seqs, keys = labels[live, 0], labels[live, 1]
    out.labels = dict(zip(seqs.tolist(), keys.tolist(), strict=True))
    if len(out.labels) != len(seqs):
        out.problems.append(
            f"vector index {path}: {len(seqs) - len(out.labels)} seqs have more than one live "
            f"label; {rebuilt}"
        )
    return out


# -- the scheduler's graph versions ----------------------------------------------------------------


@dataclass
class GraphFile:
    """One stored graph version as read from its file (``ok`` False: it does not load)."""

    version: int
    path: Path
    ok: bool = False
    base_version: int = -1
    concept_ids: tuple[str, ...] = ()
    edge_count: int = 0
    created_at_ms: int = 0
    digest: str = ""
    problems: list[str] = field(default_factory=list)


def _ids(blob: NDArray[Any], offsets: NDArray[Any]) -> tuple[str, ...]:
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != blob.size:
        raise ValueError("ids_offsets do not span ids_blob")
    if np.any(np.diff(offsets) <= 0):
        raise ValueError("ids_offsets are not strictly increasing (an empty or negative id)")
    raw = blob.astype(np.uint8).tobytes()
    return tuple(raw[offsets[i] : offsets[i + 1]].decode() for i in range(len(offsets) - 1))


def _check_graph(g: GraphFile, a: dict[str, NDArray[Any]]) -> None:
    """Every rule graph_store.validate_graph and commit guarantee for a stored version."""
    header = json.loads(str(a["header"]))
    g.base_version = int(header["base_version"])
    g.edge_count = int(header["edge_count"])
    g.created_at_ms = int(header["created_at_ms"])
    if int(header["version"]) != g.version:
        g.problems.append(f"its header says version {header['version']}")
    ids = _ids(a["ids_blob"], a["ids_offsets"])
    g.concept_ids = ids
    n = len(ids)
    if len(set(ids)) != n:
        g.problems.append("its concept index repeats an id")
    if int(header["concept_count"]) != n:
        g.problems.append(
            f"its header counts {header['concept_count']} concepts but the concept index holds {n}"
        )
    if a["biases"].shape != (n,):
        g.problems.append(f"{a['biases'].shape[0]} biases for {n} concepts")
    elif not np.all(np.isfinite(a["biases"])):
        g.problems.append("a bias is NaN or inf")
    ei, ej, ew = a["edge_i"], a["edge_j"], a["edge_w"]
    if not (ei.shape == ej.shape == ew.shape):
        g.problems.append("edge_i, edge_j and edge_w differ in length")
    elif len(ei):
        if ei.min() < 0 or ej.max() >= n:
            g.problems.append(f"an edge names a concept outside the index of {n}")
        if np.any(ei >= ej):
            g.problems.append("an edge is not stored as its upper triangle (i < j)")
        if not np.all(np.isfinite(ew)):
            g.problems.append("an edge weight is NaN or inf")
        if np.unique(ei.astype(np.int64) * max(n, 1) + ej).size != ei.size:
            g.problems.append("an edge is stored twice")
    edges = int(np.count_nonzero(ew)) if ew.shape == ei.shape else -1
    if edges != g.edge_count:
        g.problems.append(f"its header counts {g.edge_count} edges but it stores {edges}")
    indptr, indices, support = a["proto_indptr"], a["proto_indices"], a["proto_support"]
    if (
        len(indptr) == 0
        or indptr[0] != 0
        or indptr[-1] != len(indices)
        or np.any(np.diff(indptr) < 0)
    ):
        g.problems.append("the prototypes' row pointers do not match their entries")
    elif len(indices) and (indices.min() < 0 or indices.max() >= n):
        g.problems.append(f"a prototype names a concept outside the index of {n}")
    if len(indptr) and support.shape != (len(indptr) - 1,):
        g.problems.append(f"{support.shape[0]} support counts for {len(indptr) - 1} prototypes")


def read_graphs(root: Path) -> tuple[list[GraphFile], list[str]]:
    """Every retained version in ``root`` (oldest first) and the names of leftover temporary
    files (a crash mid-write; the store deletes them when it opens the directory)."""
    if not root.is_dir():
        return [], []
    found: list[GraphFile] = []
    leftovers = []
    for entry in sorted(root.iterdir()):
        m = GRAPH_FILE.match(entry.name)
        if entry.name.startswith(".tmp-"):
            leftovers.append(entry.name)
        if not m:
            continue
        g = GraphFile(int(m.group(1)), entry)
        try:
            arrays = _load_npz(entry)
            missing = [k for k in _GRAPH_ARRAYS if k not in arrays]
            if missing:
                raise ValueError(f"arrays {missing} are missing")
            _check_graph(g, arrays)
            g.digest = array_digest(arrays)
            g.ok = not g.problems
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            g.problems.append(f"does not load ({exc})")
        found.append(g)
    return found, leftovers


# -- the learner's state ---------------------------------------------------------------------------


@dataclass
class LearnerFile:
    """What the learner's state names: the concepts of each part, its cursor and its digest."""

    path: Path
    present: bool = False
    cursor: int = 0
    concepts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # part -> concept ids
    digest: str = ""
    problems: list[str] = field(default_factory=list)


def _strs(a: NDArray[Any]) -> tuple[str, ...]:
    return tuple(str(c) for c in a)


def read_learner(data_dir: Path) -> LearnerFile:
    """The learner's state.npz in ``data_dir`` (absent: nothing learnt yet)."""
    path = data_dir / LEARNER_FILE
    out = LearnerFile(path)
    if not path.exists():
        return out
    out.present = True
    try:
        a = _load_npz(path)
        meta = json.loads(bytes(a["meta"]).decode())
        out.cursor = int(meta["cursor"])
        out.digest = array_digest(a)
        for part, prefix, matrix in (
            ("modes", "served_", "served_modes"),
            ("last fit", "fit_", "fit_modes"),
            ("couplings", "c_", "c_couplings"),
        ):
            if f"{prefix}concept_ids" not in a:
                continue
            ids = _strs(a[f"{prefix}concept_ids"])
            out.concepts[part] = ids
            rows = a[matrix].shape[0] if matrix in a else -1
            if rows != len(ids):
                out.problems.append(
                    f"learner state {path}: the {part} cover {rows} concepts but name "
                    f"{len(ids)}; move the file away and let the learner refit (ResetModel)"
                )
        out.concepts["fit index"] = tuple(str(c) for c in meta.get("fit_ids", []))
        window = [c for i in range(int(meta.get("window", 0))) for c in _strs(a[f"w{i}_ids"])]
        out.concepts["window"] = tuple(dict.fromkeys(window))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        out.problems.append(
            f"learner state {path}: unreadable ({exc}); the learner refuses to start on it: "
            "move the file away to learn afresh"
        )
    return out
