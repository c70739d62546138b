"""The learner's state on disk: one file, replaced atomically after every update.

`state.npz` in the data dir holds the served modes, the last full fit (psi-drift's reference),
the couplings, the window of traces, the open activation streams, the counters and the vault
cursor, together. Writing goes to a temporary file, is fsynced, then renamed over the old one
(and the directory fsynced), so a crash leaves either the old or the new state, never a mix, and
the cursor never runs ahead of the model that learnt from those episodes.

The online tracker is not stored: the first update after a restart refits the window, which is
what the periodic refit does anyway. Arrays are read with allow_pickle=False; metadata is JSON.

Each named stream (streams.py) has a file of the same layout beside it, `stream-<hash of the
name>.npz`, whose metadata also holds the stream's spec (dt, unit, delays, scaling). They sit at
the top of the data dir so `tori-ops backup` (which copies its files) takes them along.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mcp_services.koopman_learner.domain import CouplingEstimate, DmdModel
from mcp_services.koopman_learner.domain.arrays import readonly
from mcp_services.koopman_learner.domain.learner import Counters, Learner
from mcp_services.koopman_learner.domain.streams import StreamSet, StreamSpec
from mcp_services.koopman_learner.domain.traces import RawSnapshot, Trace

FORMAT_VERSION = 1
FILE_NAME = "state.npz"

_MODEL_ARRAYS = (
    "eigenvalues",
    "modes",
    "amplitudes",
    "basis",
    "singular_values",
    "reduced_operator",
    "eigenvectors",
)
_COUPLING_ARRAYS = (
    "couplings",
    "natural_frequencies",
    "identifiable",
    "unidentifiable_links",
    "noise_level",
    "penalty",
)


class StateError(Exception):
    """The state file exists but cannot be read; the message names it and what to do."""


def _ids(values: tuple[str, ...] | list[str]) -> NDArray[Any]:
    return np.asarray(list(values), dtype=np.str_) if values else np.zeros(0, dtype="<U1")


def _put_model(arrays: dict[str, NDArray[Any]], prefix: str, model: DmdModel | None) -> Any:
    if model is None:
        return None
    arrays[f"{prefix}concept_ids"] = _ids(model.concept_ids)
    for name in _MODEL_ARRAYS:
        arrays[f"{prefix}{name}"] = np.asarray(getattr(model, name))
    return {
        "dt": model.dt,
        "n_pairs": model.n_pairs,
        "n_traces": model.n_traces,
        "svd_method": model.svd_method,
    }


def _get_model(npz: Any, prefix: str, meta: Any) -> DmdModel | None:
    if meta is None:
        return None
    fields = {name: readonly(np.array(npz[f"{prefix}{name}"])) for name in _MODEL_ARRAYS}
    return DmdModel(
        concept_ids=tuple(str(c) for c in npz[f"{prefix}concept_ids"]),
        dt=float(meta["dt"]),
        n_pairs=int(meta["n_pairs"]),
        n_traces=int(meta["n_traces"]),
        svd_method=str(meta["svd_method"]),
        **fields,
    )


STREAM_PREFIX = "stream-"


def stream_path(data_dir: Path, name: str) -> Path:
    """The state file of named stream `name` (any characters: the file is named by a hash)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return data_dir / f"{STREAM_PREFIX}{digest}.npz"


def stream_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob(f"{STREAM_PREFIX}*.npz"))


def read_stream(path: Path) -> dict[str, Any]:
    """The stream spec (StreamSpec.to_json) stored in a named stream's state file.

    Raises:
        StateError: the file is unreadable or holds no stream.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
        stream = meta["stream"]
        if not isinstance(stream, dict):
            raise TypeError("no stream spec")
        return stream
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(
            f"cannot read the stream state {path}: {exc}; move the file away to forget the stream"
        ) from exc


def save(path: Path, learner: Learner, stream: dict[str, Any] | None = None) -> None:
    """Write the learner's state to `path` atomically (see the module docstring)."""
    state = learner.state()
    arrays: dict[str, NDArray[Any]] = {}
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "stream": stream,
        "dt": learner.knobs.dt_s,
        "cursor": learner.cursor,
        "model_version": learner.model_version,
        "fitted_at": learner.fitted_at,
        "rank_in_force": learner.rank_in_force,
        "recommended_rank": learner.recommended_rank,
        "psi_drift": learner.psi_drift,
        "prediction_error": learner.prediction_error,
        "last_update_seconds": learner.last_update_seconds,
        "last_update": learner.last_update,
        "coupling_status": learner.coupling_status,
        "phase_source": learner.phase_source,
        "couplings_version": learner.couplings_version,
        "couplings_updated_at": learner.couplings_updated_at,
        "counters": vars(learner.counters),
        "fit_ids": list(state.fit_ids),
        "served": _put_model(arrays, "served_", state.served),
        "last_fit": _put_model(arrays, "fit_", state.last_fit),
        "window": len(state.window),
        "streams": [
            [source, [[s.time_s, s.strengths, s.phases] for s in snaps]]
            for source, snaps in learner.streams.pending()
        ],
    }
    for i, trace in enumerate(state.window):
        arrays[f"w{i}_ids"] = _ids(trace.concept_ids)
        arrays[f"w{i}_values"] = trace.values
        if trace.phases is not None:
            arrays[f"w{i}_phases"] = trace.phases
    c = state.couplings
    meta["couplings"] = None
    if c is not None:
        arrays["c_concept_ids"] = _ids(c.concept_ids)
        for name in _COUPLING_ARRAYS:
            arrays[f"c_{name}"] = np.asarray(getattr(c, name))
        meta["couplings"] = {
            "status": c.status,
            "n_rows": c.n_rows,
            "n_clamped": c.n_clamped,
            "n_rate_limited": c.n_rate_limited,
            "solver_converged": c.solver_converged,
        }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path, learner: Learner) -> bool:
    """Restore `learner` from `path`; False when there is no state yet.

    Raises:
        StateError: the file is unreadable, of another format, or for another dt.
    """
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            _check(meta, path, learner.knobs.dt_s)
            window = []
            for i in range(int(meta["window"])):
                phases = np.array(npz[f"w{i}_phases"]) if f"w{i}_phases" in npz.files else None
                window.append(
                    Trace(
                        tuple(str(c) for c in npz[f"w{i}_ids"]),
                        np.array(npz[f"w{i}_values"]),
                        phases,
                    )
                )
            served = _get_model(npz, "served_", meta["served"])
            last_fit = _get_model(npz, "fit_", meta["last_fit"])
            couplings = None
            if meta["couplings"] is not None:
                cm = meta["couplings"]
                fields = {n: readonly(np.array(npz[f"c_{n}"])) for n in _COUPLING_ARRAYS}
                couplings = CouplingEstimate(
                    concept_ids=tuple(str(c) for c in npz["c_concept_ids"]),
                    status=cm["status"],
                    n_rows=int(cm["n_rows"]),
                    n_clamped=int(cm["n_clamped"]),
                    n_rate_limited=int(cm["n_rate_limited"]),
                    solver_converged=bool(cm["solver_converged"]),
                    **fields,
                )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(
            f"cannot read the learner state {path}: {exc}; move the file away to start fresh"
        ) from exc
    learner.cursor = int(meta["cursor"])
    learner.model_version = int(meta["model_version"])
    learner.fitted_at = float(meta["fitted_at"])
    learner.rank_in_force = int(meta["rank_in_force"])
    learner.recommended_rank = int(meta["recommended_rank"])
    learner.psi_drift = float(meta["psi_drift"])
    learner.prediction_error = float(meta["prediction_error"])
    learner.last_update_seconds = float(meta["last_update_seconds"])
    learner.last_update = float(meta["last_update"])
    learner.coupling_status = str(meta["coupling_status"])
    learner.phase_source = meta["phase_source"]
    learner.couplings_version = int(meta["couplings_version"])
    learner.couplings_updated_at = float(meta["couplings_updated_at"])
    learner.counters = Counters(**meta["counters"])
    learner.streams.restore(
        [
            (source, [RawSnapshot(float(t), dict(s), dict(p) if p else None) for t, s, p in snaps])
            for source, snaps in meta["streams"]
        ]
    )
    learner.restore(window, tuple(meta["fit_ids"]), last_fit, served, couplings)
    return True


def _check(meta: dict[str, Any], path: Path, dt: float) -> None:
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    if not np.isclose(float(meta["dt"]), dt, rtol=1e-12):
        raise ValueError(
            f"it was learnt at dt_s={meta['dt']} but koopman_learner.dt_s is {dt}; set dt_s back"
            " or move the file away to learn afresh at the new dt"
        )


class LearnerFiles:
    """A learner service's files in its data dir: the default stream's state (`state.npz`) and
    one file per named stream. Every method does file I/O: call it on the numerics worker."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.path = data_dir / FILE_NAME

    def load(self, learner: Learner) -> bool:
        """Restore the default stream's learner; False when there is no state yet."""
        return load(self.path, learner)

    def save(self, learner: Learner) -> None:
        save(self.path, learner)

    def load_streams(self, streams: StreamSet) -> None:
        """Restore every named stream whose file is in the data dir into `streams`."""
        for path in stream_files(self.dir):
            spec = StreamSpec.from_json(read_stream(path))
            learner = streams.new_learner(spec)
            load(path, learner)
            streams.restore(spec, learner)

    def save_stream(self, name: str, learner: Learner, spec: StreamSpec) -> None:
        save(stream_path(self.dir, name), learner, spec.to_json())

    def forget_stream(self, name: str) -> None:
        stream_path(self.dir, name).unlink(missing_ok=True)
