"""`tori-ops backup` / `tori-ops restore`: a consistent online snapshot of every service's data.

What a backup holds (one directory, with a manifest of every file's SHA-256):

- **vault**: SQLite through SQLite's online backup API (a point-in-time copy taken while the
  vault keeps serving); a memory vault's snapshot file; Redis and PostgreSQL as a
  `tori-ops export` JSONL stream (each episode whole, in storage order; for a point-in-time
  copy of a busy server use its own tools, BGSAVE or pg_dump, as well). The search index is
  not copied: the vault rebuilds it from the episodes when it is missing.
- **graphs**: the SleepScheduler's graph versions, copied under the store's own commit lock,
  so no version is half-written and the set matches one moment.
- **pruner**: the SparsePruner's backups of earlier graphs.
- **koopman**: the KoopmanLearner's state file (modes, couplings, cursor; written atomically).

Restore checks every checksum first, refuses while any service of the fleet is answering
(stop it first: `make down`), and refuses to overwrite existing data unless `--force`, in which
case what was there is moved aside (`<name>.before-restore-<time>`) rather than deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcp_services.common.clients import dial_address
from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.common.config_schema import Settings
from mcp_services.common.health import check
from mcp_services.episodic_vault.backends import BackendError, open_backend
from mcp_services.ops.backend_spec import describe
from mcp_services.ops.transfer import TransferError, export, import_file

MANIFEST = "manifest.json"
FORMAT = "tori-backup"


class BackupError(Exception):
    """The backup cannot be made or restored; the message says why and what to do."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dirs(settings: Settings) -> dict[str, Path]:
    """Where the graph, pruner and learner services keep their files (as they compute it)."""
    from mcp_services.koopman_learner.server import data_dir as koopman_dir
    from mcp_services.sleep_scheduler.server import graph_dir
    from mcp_services.sparse_pruner.server import backup_root

    return {
        "graphs": resolve_path(graph_dir(settings)),
        "pruner": resolve_path(backup_root(settings)),
        "koopman": resolve_path(koopman_dir(settings)),
    }


@contextlib.contextmanager
def _graph_lock(root: Path) -> Iterator[None]:
    """The graph store's commit lock: no version is written while we copy."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _copy_files(src: Path, dst: Path, pattern: str) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    if src.is_dir():
        for path in sorted(src.glob(pattern)):
            if path.is_file() and not path.name.endswith(".tmp") and not path.name.startswith("."):
                shutil.copy2(path, dst / path.name)
                copied.append(path.name)
    return copied


def backup(settings: Settings, out: Path) -> dict[str, Any]:
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; choose a new directory for the backup")
    out.mkdir(parents=True, exist_ok=True)
    components: dict[str, Any] = {}
    vault = settings.vault
    (out / "vault").mkdir()
    if vault.backend == "sqlite":
        src = resolve_path(vault.sqlite.path)
        if not src.exists():
            raise BackupError(f"no vault database at {src}; nothing to back up")
        with (
            sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source,
            sqlite3.connect(out / "vault" / "vault.db") as target,
        ):
            source.backup(target)
        components["vault"] = {"kind": "sqlite", "source": str(src), "files": ["vault.db"]}
    elif vault.backend == "memory":
        snap = vault.memory.snapshot_file
        if not snap or not resolve_path(snap).exists():
            raise BackupError(
                "the memory vault has no snapshot file (vault.memory.snapshot_file), so it keeps "
                "nothing on disk to back up; use tori-ops export against a durable backend"
            )
        shutil.copy2(resolve_path(snap), out / "vault" / "snapshot")
        components["vault"] = {"kind": "memory", "source": snap, "files": ["snapshot"]}
    else:
        backend = open_backend(vault)
        try:
            written, last = export(
                backend, describe(vault), out / "vault" / "episodes.jsonl", False
            )
        finally:
            backend.close()
        components["vault"] = {
            "kind": vault.backend,
            "source": describe(vault),
            "files": ["episodes.jsonl"],
            "episodes": written,
            "last_seq": last,
        }
    dirs = _dirs(settings)
    with _graph_lock(dirs["graphs"]):
        graphs = _copy_files(dirs["graphs"], out / "graphs", "v*.npz")
    components["graphs"] = {"source": str(dirs["graphs"]), "files": graphs}
    components["pruner"] = {
        "source": str(dirs["pruner"]),
        "files": _copy_files(dirs["pruner"], out / "pruner", "*"),
    }
    components["koopman"] = {
        "source": str(dirs["koopman"]),
        "files": _copy_files(dirs["koopman"], out / "koopman", "*"),
    }
    checksums = {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {
        "format": FORMAT,
        "version": 1,
        "created_at_ms": int(time.time() * 1000),
        "environment": settings.environment,
        "components": components,
        "sha256": checksums,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _running_services(settings: Settings) -> list[str]:
    up = []
    for name in type(settings.services).model_fields:
        address = dial_address(settings, name)
        if check(address, timeout=0.5) == "SERVING":
            up.append(f"{name} ({address})")
    return up


def _verify(src: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(
            f"{src}/{MANIFEST} is missing or unreadable ({exc}); not a backup"
        ) from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src} is not a {FORMAT} directory")
    for rel, digest in manifest["sha256"].items():
        path = src / rel
        if not path.is_file():
            raise BackupError(
                f"{rel} is listed in the manifest but missing; the backup is incomplete"
            )
        if _sha256(path) != digest:
            raise BackupError(f"{rel} does not match its checksum; the backup is damaged")
    return manifest


def _move_aside(path: Path, stamp: str) -> None:
    if path.exists():
        path.rename(path.with_name(f"{path.name}.before-restore-{stamp}"))


def restore(settings: Settings, src: Path, force: bool) -> list[str]:
    manifest = _verify(src)
    running = _running_services(settings)
    if running:
        raise BackupError(
            f"services are running: {', '.join(running)}; stop the fleet (make down) and "
            "restore again"
        )
    stamp = time.strftime("%Y%m%dT%H%M%S")
    done: list[str] = []
    vault = settings.vault
    comp = manifest["components"]["vault"]
    # A JSONL backup (redis, postgres) loads into any backend; a file backup needs its own kind.
    if comp["kind"] in ("sqlite", "memory"):
        if vault.backend != comp["kind"]:
            raise BackupError(
                f"the backup holds a {comp['kind']} vault but vault.backend is {vault.backend}; "
                f"set vault.backend: {comp['kind']}, or move the data with tori-ops export/import"
            )
        target = resolve_path(
            vault.sqlite.path if comp["kind"] == "sqlite" else vault.memory.snapshot_file
        )
        if target.exists() and not force:
            raise BackupError(f"{target} exists; pass --force to move it aside and restore")
        for suffix in ("", "-wal", "-shm"):
            _move_aside(target.with_name(target.name + suffix), stamp)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "vault" / comp["files"][0], target)
        done.append(f"vault: {comp['kind']} file -> {target}")
    else:
        backend = open_backend(vault)
        try:
            if backend.stats().episode_count and not force:
                raise BackupError(
                    f"{describe(vault)} already holds episodes; pass --force to load the backup "
                    "on top (existing ids with the same content are kept)"
                )
            counts = import_file(
                backend, vault, src / "vault" / "episodes.jsonl", describe(vault), False
            )
        finally:
            backend.close()
        done.append(f"vault: {counts.created} episodes into {describe(vault)}")
    dirs = _dirs(settings)
    for name in ("graphs", "pruner", "koopman"):
        files = manifest["components"][name]["files"]
        target = dirs[name]
        if target.exists() and any(p for p in target.iterdir() if not p.name.startswith(".")):
            if not force:
                raise BackupError(
                    f"{target} is not empty; pass --force to move it aside and restore"
                )
            _move_aside(target, stamp)
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(src / name / f, target / f)
        done.append(f"{name}: {len(files)} files -> {target}")
    return done


def add_backup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) directory")


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src", type=Path, required=True, help="a backup directory")
    p.add_argument("--force", action="store_true", help="move existing data aside and restore")


def _settings() -> Settings | None:
    try:
        return load_config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def run_backup(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    try:
        manifest = backup(settings, args.out)
    except (BackupError, BackendError, TransferError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, comp in manifest["components"].items():
        print(f"{name:<8} {len(comp['files'])} file(s) from {comp['source']}")
    print(f"backup written to {args.out} ({len(manifest['sha256'])} files, checksummed)")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    try:
        done = restore(settings, args.src, args.force)
    except (BackupError, BackendError, TransferError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(done))
    print(f"restored from {args.src}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tori-ops backup", description=__doc__)
    add_backup_arguments(p)
    return run_backup(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
