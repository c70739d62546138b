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

Restore treats the backup as untrusted input. It checks the whole manifest before anything is
written: every listed file is a plain name (no path, no ``..``) with a checksum, every checksum
names a listed file, every file is a regular file (a symlink or a device is refused), and with a
backup key (``--key-file`` or ``TORI_BACKUP_KEY_FILE``) the manifest's HMAC-SHA256 must verify.
It then refuses while any service of the fleet is answering (stop it first: `make down`) and
refuses to overwrite existing data unless `--force` — all before the first write. Files are copied
into staging beside their targets (re-hashed while copied), and only then renamed into place; what
was there is moved aside (`<name>.before-restore-<time>`) rather than deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcp_services.common.clients import dial_address
from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.common.config_schema import Settings
from mcp_services.common.health import check
from mcp_services.common.namespaces import NAMESPACES_DIR
from mcp_services.episodic_vault.backends import BackendError, open_backend
from mcp_services.ops.backend_spec import describe
from mcp_services.ops.transfer import TransferError, export, import_file

MANIFEST = "manifest.json"
FORMAT = "tori-backup"
COMPONENTS = ("vault", "graphs", "pruner", "koopman")
# The one file a vault component holds, by the kind of backend it came from.
VAULT_FILES = {
    "sqlite": "vault.db",
    "memory": "snapshot",
    "redis": "episodes.jsonl",
    "postgres": "episodes.jsonl",
}
# A file name as backup() writes them: no separator, no leading dot, nothing to interpret.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
KEY_FILE_ENV = "TORI_BACKUP_KEY_FILE"


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


def unsaved_namespaces(settings: Settings) -> list[Path]:
    """The namespaces' data (other than the default's) on this host, which a backup does not
    hold yet: the vault's, graph, pruner and learner directories under ``namespaces/``."""
    vault = settings.vault
    where = vault.sqlite.path if vault.backend == "sqlite" else vault.memory.snapshot_file
    roots = [resolve_path(where).parent] if vault.backend in ("sqlite", "memory") and where else []
    roots += list(_dirs(settings).values())
    found = [r / NAMESPACES_DIR for r in roots]
    return sorted(p for d in found if d.is_dir() for p in d.iterdir())


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


def read_backup_key(path: Path | None) -> bytes | None:
    """The backup key from ``path``, else from the file TORI_BACKUP_KEY_FILE names, else None."""
    if path is None:
        env = os.environ.get(KEY_FILE_ENV, "").strip()
        path = Path(env) if env else None
    if path is None:
        return None
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise BackupError(
            f"cannot read the backup key file {path} ({exc.strerror}); fix the path given by "
            f"--key-file or {KEY_FILE_ENV}"
        ) from exc
    if len(key) < 16:
        raise BackupError(f"the backup key in {path} is shorter than 16 bytes; use a longer key")
    return key


def manifest_hmac(manifest: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the manifest's canonical JSON, without its own ``hmac`` field."""
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def backup(settings: Settings, out: Path, key: bytes | None = None) -> dict[str, Any]:
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
    if key is not None:
        manifest["hmac"] = manifest_hmac(manifest, key)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _running_services(settings: Settings) -> list[str]:
    up = []
    for name in type(settings.services).model_fields:
        address = dial_address(settings, name)
        if check(address, timeout=0.5) == "SERVING":
            up.append(f"{name} ({address})")
    return up


def _refuse(what: str) -> BackupError:
    return BackupError(f"{what}; the backup was altered or damaged, and nothing was restored")


def _check_layout(manifest: Any) -> dict[str, Any]:
    """The manifest's shape: known components, plain file names, one checksum per file."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"not a {FORMAT} directory (the manifest's format is not {FORMAT!r})")
    comps, sums = manifest.get("components"), manifest.get("sha256")
    if not isinstance(comps, dict) or set(comps) != set(COMPONENTS):
        raise _refuse(f"the manifest's components must be exactly {', '.join(COMPONENTS)}")
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise _refuse("the manifest's sha256 is not a map of file to checksum")
    listed: set[str] = set()
    for name in COMPONENTS:
        files = comps[name].get("files") if isinstance(comps[name], dict) else None
        if not isinstance(files, list):
            raise _refuse(f"components.{name}.files is not a list of file names")
        for f in files:
            if not isinstance(f, str) or not _PLAIN_NAME.fullmatch(f):
                raise _refuse(
                    f"components.{name}.files holds {f!r}, which is not a plain file name "
                    "(a backup names its files without any path)"
                )
            rel = f"{name}/{f}"
            if rel not in sums:
                raise _refuse(f"{rel} is listed in components.{name} but has no checksum")
            listed.add(rel)
    if extra := sorted(set(sums) - listed):
        raise _refuse(f"sha256 lists {', '.join(extra[:3])}, which no component names")
    kind = comps["vault"].get("kind")
    if kind not in VAULT_FILES or comps["vault"]["files"] != [VAULT_FILES[str(kind)]]:
        raise _refuse(
            f"components.vault must be one of {', '.join(VAULT_FILES)} with its one file "
            f"(got kind {kind!r}, files {comps['vault']['files']!r})"
        )
    return manifest


def _regular_file(src: Path, rel: str) -> Path:
    """src/rel, refused unless its directory and the file itself are real (no symlink, no
    device, no FIFO)."""
    comp, name = rel.split("/", 1)
    for path, want in ((src / comp, stat.S_ISDIR), (src / comp / name, stat.S_ISREG)):
        try:
            mode = path.lstat().st_mode
        except OSError as exc:
            raise _refuse(
                f"{path.relative_to(src)} is listed but missing ({exc.strerror})"
            ) from None
        if not want(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or directory"
            raise _refuse(f"{path.relative_to(src)} is {what}")
    return src / comp / name


def _copy_verified(path: Path, digest: str, dst: Path | None, rel: str) -> None:
    """Hash ``path`` (opened without following links) and, when ``dst`` is given, copy it there
    in the same pass; refuse on a checksum mismatch (the copy is then removed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise _refuse(f"{rel} is not a regular file")
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(dst.open("xb")) if dst is not None else None
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                if out is not None:
                    out.write(block)
    if not hmac.compare_digest(h.hexdigest(), digest):
        if dst is not None:
            dst.unlink(missing_ok=True)
        raise _refuse(f"{rel} does not match its checksum")


def _verify(src: Path, key: bytes | None) -> dict[str, Any]:
    """The manifest, once its shape, HMAC (with a key), files and checksums all hold."""
    try:
        if not stat.S_ISDIR(src.lstat().st_mode):
            raise BackupError(f"{src} is not a directory; give the backup's directory")
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(
            f"{src}/{MANIFEST} is missing or unreadable ({exc}); not a backup"
        ) from exc
    manifest = _check_layout(manifest)
    if key is not None:
        given = manifest.get("hmac")
        if not isinstance(given, str) or not hmac.compare_digest(
            given, manifest_hmac(manifest, key)
        ):
            raise _refuse(
                "the manifest's HMAC does not verify with the configured backup key"
                if given
                else "the manifest carries no HMAC but a backup key is configured"
            )
    for rel, digest in manifest["sha256"].items():
        _copy_verified(_regular_file(src, rel), digest, None, rel)
    return manifest


def _move_aside(path: Path, stamp: str) -> None:
    if path.exists() or path.is_symlink():
        path.rename(path.with_name(f"{path.name}.before-restore-{stamp}"))


def _has_data(target: Path) -> bool:
    return target.is_dir() and any(not p.name.startswith(".") for p in target.iterdir())


def restore(settings: Settings, src: Path, force: bool, key: bytes | None = None) -> list[str]:
    """Restore ``src`` into the configured fleet; nothing is written unless every check holds."""
    manifest = _verify(src, key)
    running = _running_services(settings)
    if running:
        raise BackupError(
            f"services are running: {', '.join(running)}; stop the fleet (make down) and "
            "restore again"
        )
    vault = settings.vault
    comp = manifest["components"]["vault"]
    sums: dict[str, str] = manifest["sha256"]
    # -- every precondition, before the first write -----------------------------------------
    vault_target: Path | None = None
    if comp["kind"] in ("sqlite", "memory"):
        # A file backup needs its own kind of backend; a JSONL one loads into any.
        if vault.backend != comp["kind"]:
            raise BackupError(
                f"the backup holds a {comp['kind']} vault but vault.backend is {vault.backend}; "
                f"set vault.backend: {comp['kind']}, or move the data with tori-ops export/import"
            )
        if comp["kind"] == "memory" and not vault.memory.snapshot_file:
            raise BackupError(
                "the backup holds a memory vault's snapshot but vault.memory.snapshot_file is "
                "not set; set it to where the snapshot should go"
            )
        vault_target = resolve_path(
            vault.sqlite.path if comp["kind"] == "sqlite" else vault.memory.snapshot_file
        )
        if vault_target.exists() and not force:
            raise BackupError(f"{vault_target} exists; pass --force to move it aside and restore")
    else:
        backend = open_backend(vault)
        try:
            if backend.stats().episode_count and not force:
                raise BackupError(
                    f"{describe(vault)} already holds episodes; pass --force to load the backup "
                    "on top (existing ids with the same content are kept)"
                )
        finally:
            backend.close()
    dirs = _dirs(settings)
    for name in ("graphs", "pruner", "koopman"):
        if _has_data(dirs[name]) and not force:
            raise BackupError(
                f"{dirs[name]} is not empty; pass --force to move it aside and restore"
            )
    # -- stage: copies beside their targets, re-hashed as they are written ------------------
    stamp = time.strftime("%Y%m%dT%H%M%S")
    staged: list[Path] = []
    try:
        if vault_target is not None:
            vault_target.parent.mkdir(parents=True, exist_ok=True)
            tmp = vault_target.with_name(f".{vault_target.name}.restore-{stamp}")
            staged.append(tmp)
            rel = f"vault/{comp['files'][0]}"
            _copy_verified(src / rel, sums[rel], tmp, rel)
        for name in ("graphs", "pruner", "koopman"):
            target = dirs[name]
            target.parent.mkdir(parents=True, exist_ok=True)
            stage = target.with_name(f".{target.name}.restore-{stamp}")
            staged.append(stage)
            stage.mkdir()
            for f in manifest["components"][name]["files"]:
                rel = f"{name}/{f}"
                _copy_verified(src / rel, sums[rel], stage / f, rel)
    except BaseException:
        for path in staged:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise
    # -- commit: load or rename into place ---------------------------------------------------
    done: list[str] = []
    if vault_target is None:
        backend = open_backend(vault)
        try:
            counts = import_file(
                backend, vault, src / "vault" / "episodes.jsonl", describe(vault), False
            )
        finally:
            backend.close()
        done.append(f"vault: {counts.created} episodes into {describe(vault)}")
    else:
        for suffix in ("", "-wal", "-shm"):
            _move_aside(vault_target.with_name(vault_target.name + suffix), stamp)
        os.replace(staged[0], vault_target)
        done.append(f"vault: {comp['kind']} file -> {vault_target}")
    for stage, name in zip(staged[-3:], ("graphs", "pruner", "koopman"), strict=True):
        target = dirs[name]
        if target.is_dir() and not _has_data(target) and not target.is_symlink():
            shutil.rmtree(target)  # only a lock file or nothing: nothing to keep
        _move_aside(target, stamp)
        stage.rename(target)
        done.append(f"{name}: {len(manifest['components'][name]['files'])} files -> {target}")
    return done


def _key_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-file",
        type=Path,
        help=f"a file holding the backup key (HMAC of the manifest); default: ${KEY_FILE_ENV}",
    )


def add_backup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) directory")
    _key_argument(p)


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src", type=Path, required=True, help="a backup directory")
    p.add_argument("--force", action="store_true", help="move existing data aside and restore")
    _key_argument(p)


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
        manifest = backup(settings, args.out, read_backup_key(args.key_file))
    except (BackupError, BackendError, TransferError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, comp in manifest["components"].items():
        print(f"{name:<8} {len(comp['files'])} file(s) from {comp['source']}")
    print(f"backup written to {args.out} ({len(manifest['sha256'])} files, checksummed)")
    if left := unsaved_namespaces(settings):
        print(
            f"warning: the default namespace only; {len(left)} namespace directories are not in "
            f"this backup ({', '.join(str(p) for p in left[:4])}{', ...' if len(left) > 4 else ''}"
            "): copy them with the fleet stopped",
            file=sys.stderr,
        )
    return 0


def run_restore(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    try:
        done = restore(settings, args.src, args.force, read_backup_key(args.key_file))
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
