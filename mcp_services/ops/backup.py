"""`tori-ops backup` / `tori-ops restore`: a consistent online snapshot of every service's data,
for every namespace (tenant).

What a backup holds (one directory, with a manifest of every file's SHA-256), per namespace:

- **vault**: SQLite through SQLite's online backup API (a point-in-time copy taken while the
  vault keeps serving); a memory vault's snapshot file; Redis and PostgreSQL as a
  `tori-ops export` JSONL stream (each episode whole, in storage order; for a point-in-time
  copy of a busy server use its own tools, BGSAVE or pg_dump, as well). The search index is
  not copied: the vault rebuilds it from the episodes when it is missing.
- **graphs**: the SleepScheduler's graph versions, copied under the store's own commit lock,
  so no version is half-written and the set matches one moment.
- **pruner**: the SparsePruner's backups of earlier graphs.
- **koopman**: the KoopmanLearner's state file (modes, couplings, cursor; written atomically).

The default namespace's files lie at the top of the backup (as in a backup made before
namespaces), each other namespace's under ``namespaces/<ns>/``; the namespaces are those the
fleet holds data for (ops.fleet_namespaces; ``--namespace`` adds names a PostgreSQL vault's schemas
cannot tell).

Restore treats the backup as untrusted input (ops.backup_manifest checks the manifest, names,
checksums, symlinks and the HMAC with a backup key: ``--key-file`` or ``TORI_BACKUP_KEY_FILE``).
It then refuses while any service of the fleet is answering (stop it first: `make down`) and
refuses to overwrite existing data of any namespace in the backup unless `--force` — all before
the first write. Files are copied into staging beside their targets (re-hashed while copied), and
only then renamed into place; what was there is moved aside (`<name>.before-restore-<time>`, for
a namespace's directory `namespaces/.<ns>.before-restore-<time>`) rather than deleted. A
namespace the target holds but the backup does not is left as it is (and named in the output).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_services.common.clients import dial_address
from mcp_services.common.config import ConfigError, load_config, resolve_path
from mcp_services.common.config_schema import Settings
from mcp_services.common.health import check
from mcp_services.common.namespaces import (
    DEFAULT,
    NAMESPACES_DIR,
    InvalidNamespace,
    check_namespace,
    namespace_dir,
)
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.domain.backend import BackendError
from mcp_services.episodic_vault.namespaces import namespace_config
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.ops.backend_spec import describe
from mcp_services.ops.backup_manifest import (
    FORMAT,
    MANIFEST,
    VERSION,
    BackupError,
    copy_verified,
    manifest_hmac,
    read_backup_key,
    sha256_file,
    unit_prefix,
    units,
    verify,
)
from mcp_services.ops.fleet_namespaces import UnknownNamespaces, fleet_namespaces, service_dirs
from mcp_services.ops.transfer import TransferError, export, import_file

DIRS = ("graphs", "pruner", "koopman")


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


def _vault_file(vault: VaultConfig) -> Path | None:
    """The file a SQLite or memory vault keeps its episodes in (None: a server backend)."""
    if vault.backend == "sqlite":
        return resolve_path(vault.sqlite.path)
    if vault.backend == "memory" and vault.memory.snapshot_file:
        return resolve_path(vault.memory.snapshot_file)
    return None


def _backup_vault(vault: VaultConfig, out: Path, namespace: str) -> dict[str, Any]:
    (out / "vault").mkdir(parents=True)
    src = _vault_file(vault)
    if vault.backend in ("sqlite", "memory"):
        if src is None or not src.exists():
            if namespace != DEFAULT:  # its graphs or learner state, but no episodes yet
                return {"kind": vault.backend, "source": str(src), "files": []}
            if vault.backend == "memory":
                raise BackupError(
                    "the memory vault has no snapshot file (vault.memory.snapshot_file), so it "
                    "keeps nothing on disk to back up; use tori-ops export against a durable "
                    "backend"
                )
            raise BackupError(f"no vault database at {src}; nothing to back up")
        if vault.backend == "sqlite":
            with (
                sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source,
                sqlite3.connect(out / "vault" / "vault.db") as target,
            ):
                source.backup(target)
            return {"kind": "sqlite", "source": str(src), "files": ["vault.db"]}
        shutil.copy2(src, out / "vault" / "snapshot")
        return {"kind": "memory", "source": str(src), "files": ["snapshot"]}
    backend = open_backend(vault)
    try:
        written, last = export(
            backend, describe(vault), out / "vault" / "episodes.jsonl", False, namespace=namespace
        )
    finally:
        backend.close()
    return {
        "kind": vault.backend,
        "source": describe(vault),
        "files": ["episodes.jsonl"],
        "episodes": written,
        "last_seq": last,
    }


def _backup_unit(settings: Settings, namespace: str, out: Path) -> dict[str, Any]:
    """One namespace's components, written under ``out``."""
    components = {
        "vault": _backup_vault(namespace_config(settings.vault, namespace), out, namespace)
    }
    dirs = {k: namespace_dir(v, namespace) for k, v in service_dirs(settings).items()}
    if namespace == DEFAULT or dirs["graphs"].is_dir():
        with _graph_lock(dirs["graphs"]):
            graphs = _copy_files(dirs["graphs"], out / "graphs", "v*.npz")
    else:
        graphs = _copy_files(dirs["graphs"], out / "graphs", "v*.npz")
    components["graphs"] = {"source": str(dirs["graphs"]), "files": graphs}
    for name in ("pruner", "koopman"):
        components[name] = {
            "source": str(dirs[name]),
            "files": _copy_files(dirs[name], out / name, "*"),
        }
    return components


def backup(
    settings: Settings, out: Path, key: bytes | None = None, namespaces: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Back up every namespace the fleet holds data for (and ``namespaces``) into ``out``."""
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; choose a new directory for the backup")
    try:
        names = fleet_namespaces(settings, namespaces)
    except UnknownNamespaces as exc:
        raise BackupError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    spaces = {ns: _backup_unit(settings, ns, out / unit_prefix(ns)) for ns in names}
    checksums = {
        str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created_at_ms": int(time.time() * 1000),
        "environment": settings.environment,
        "components": spaces.pop(DEFAULT),
        "namespaces": spaces,
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


def _has_data(target: Path, namespace: str) -> bool:
    """Whether ``target`` holds data of ``namespace`` (not dot files such as the graph store's
    lock, and for the default not the other namespaces' ``namespaces/``)."""
    if not target.is_dir():
        return False
    return any(
        not p.name.startswith(".") and not (namespace == DEFAULT and p.name == NAMESPACES_DIR)
        for p in target.iterdir()
    )


@dataclass
class _Plan:
    """One namespace's restore: its targets, every one checked before anything is written."""

    namespace: str
    comps: dict[str, Any]
    vault: VaultConfig
    vault_file: Path | None  # the file a SQLite/memory backup replaces; None: load JSONL
    roots: dict[str, Path]  # the services' directories (the default's), where staging lies
    dirs: dict[str, Path]  # this namespace's directory in each
    staged: dict[str, Path] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "" if self.namespace == DEFAULT else f"namespace {self.namespace}: "


def _plan(settings: Settings, namespace: str, comps: dict[str, Any], force: bool) -> _Plan:
    """The namespace's targets, once every precondition holds (nothing is written)."""
    vault = namespace_config(settings.vault, namespace)
    roots = service_dirs(settings)
    plan = _Plan(namespace, comps, vault, None, roots, {})
    plan.dirs = {k: namespace_dir(v, namespace) for k, v in roots.items()}
    kind, label = comps["vault"]["kind"], plan.label
    if not comps["vault"]["files"]:
        pass  # the namespace had no vault store: nothing to put back
    elif kind in ("sqlite", "memory"):
        # A file backup needs its own kind of backend; a JSONL one loads into any.
        if vault.backend != kind:
            raise BackupError(
                f"{label}the backup holds a {kind} vault but vault.backend is {vault.backend}; "
                f"set vault.backend: {kind}, or move the data with tori-ops export/import"
            )
        plan.vault_file = _vault_file(vault)
        if plan.vault_file is None:
            raise BackupError(
                "the backup holds a memory vault's snapshot but vault.memory.snapshot_file is "
                "not set; set it to where the snapshot should go"
            )
        if plan.vault_file.exists() and not force:
            raise BackupError(
                f"{label}{plan.vault_file} exists; pass --force to move it aside and restore"
            )
    else:
        backend = open_backend(vault)
        try:
            if backend.stats().episode_count and not force:
                raise BackupError(
                    f"{label}{describe(vault)} already holds episodes; pass --force to load the "
                    "backup on top (existing ids with the same content are kept)"
                )
        finally:
            backend.close()
    for name in DIRS:
        if _has_data(plan.dirs[name], namespace) and not force:
            raise BackupError(
                f"{label}{plan.dirs[name]} is not empty; pass --force to move it aside and restore"
            )
    return plan


def _stage(plan: _Plan, src: Path, sums: dict[str, str], stamp: str, staged: list[Path]) -> None:
    """Copy the namespace's files beside their targets, re-hashed as they are written."""
    prefix = unit_prefix(plan.namespace)
    if plan.vault_file is not None:
        plan.vault_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = plan.vault_file.with_name(f".{plan.vault_file.name}.restore-{stamp}")
        staged.append(tmp)
        plan.staged["vault"] = tmp
        rel = f"{prefix}vault/{plan.comps['vault']['files'][0]}"
        copy_verified(src / rel, sums[rel], tmp, rel)
    suffix = "" if plan.namespace == DEFAULT else f".ns.{plan.namespace}"
    for name in DIRS:
        root = plan.roots[name]
        root.parent.mkdir(parents=True, exist_ok=True)
        # Beside the service's directory, never inside it: the default's is moved aside whole.
        stage = root.with_name(f".{root.name}.restore-{stamp}{suffix}")
        staged.append(stage)
        plan.staged[name] = stage
        stage.mkdir()
        for f in plan.comps[name]["files"]:
            rel = f"{prefix}{name}/{f}"
            copy_verified(src / rel, sums[rel], stage / f, rel)


def _swap_default(target: Path, stage: Path, stamp: str) -> None:
    """Put the default's staged directory in place; the other namespaces' stay where they are."""
    aside = target.with_name(f"{target.name}.before-restore-{stamp}")
    if target.exists() or target.is_symlink():
        target.rename(aside)
    stage.rename(target)
    if aside.is_symlink() or not aside.is_dir():
        return
    kept = aside / NAMESPACES_DIR
    if kept.is_dir() and not kept.is_symlink():
        kept.rename(target / NAMESPACES_DIR)
    if not _has_data(aside, namespace=""):
        shutil.rmtree(aside)  # only a lock file or nothing: nothing to keep


def _swap_namespace(target: Path, stage: Path, namespace: str, stamp: str) -> None:
    """Put a namespace's staged directory in place; what was there goes to a hidden name (not a
    namespace's, so no service takes it for one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink() and not _has_data(target, namespace):
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.rename(target.with_name(f".{namespace}.before-restore-{stamp}"))
    stage.rename(target)


def _move_aside(path: Path, stamp: str) -> None:
    if path.exists() or path.is_symlink():
        path.rename(path.with_name(f"{path.name}.before-restore-{stamp}"))


def _commit(plan: _Plan, src: Path, stamp: str) -> list[str]:
    """Load or rename the namespace's staged data into place."""
    done: list[str] = []
    vault = plan.comps["vault"]
    if not vault["files"]:
        done.append(f"{plan.label}vault: no store in the backup, left as it is")
    elif plan.vault_file is None:
        backend = open_backend(plan.vault)
        jsonl = src / unit_prefix(plan.namespace) / "vault" / "episodes.jsonl"
        try:
            counts = import_file(backend, plan.vault, jsonl, describe(plan.vault), False)
        finally:
            backend.close()
        done.append(f"{plan.label}vault: {counts.created} episodes into {describe(plan.vault)}")
    else:
        for suffix in ("", "-wal", "-shm"):
            _move_aside(plan.vault_file.with_name(plan.vault_file.name + suffix), stamp)
        os.replace(plan.staged["vault"], plan.vault_file)
        done.append(f"{plan.label}vault: {vault['kind']} file -> {plan.vault_file}")
    for name in DIRS:
        target = plan.dirs[name]
        if plan.namespace == DEFAULT:
            _swap_default(target, plan.staged[name], stamp)
        else:
            _swap_namespace(target, plan.staged[name], plan.namespace, stamp)
        done.append(f"{plan.label}{name}: {len(plan.comps[name]['files'])} files -> {target}")
    return done


def restore(settings: Settings, src: Path, force: bool, key: bytes | None = None) -> list[str]:
    """Restore every namespace in ``src`` into the configured fleet; nothing is written unless
    every check holds, for every namespace."""
    manifest = verify(src, key)
    running = _running_services(settings)
    if running:
        raise BackupError(
            f"services are running: {', '.join(running)}; stop the fleet (make down) and "
            "restore again"
        )
    plans = [_plan(settings, ns, comps, force) for ns, comps in units(manifest)]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    staged: list[Path] = []
    try:
        for plan in plans:
            _stage(plan, src, manifest["sha256"], stamp, staged)
    except BaseException:
        for path in staged:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise
    done = [line for plan in plans for line in _commit(plan, src, stamp)]
    with contextlib.suppress(UnknownNamespaces, BackendError):
        restored = {plan.namespace for plan in plans}
        for ns in fleet_namespaces(settings):
            if ns not in restored:
                done.append(f"namespace {ns}: not in the backup, left as it is")
    return done


def _key_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-file",
        type=Path,
        help="a file holding the backup key (HMAC of the manifest); default: $TORI_BACKUP_KEY_FILE",
    )


def add_backup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) directory")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="also back up this namespace (repeat); every namespace found is backed up anyway, "
        "but a PostgreSQL vault's schemas do not carry their namespace's name",
    )
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
        for ns in args.namespace:
            check_namespace(ns, "--namespace")
        manifest = backup(settings, args.out, read_backup_key(args.key_file), tuple(args.namespace))
    except InvalidNamespace as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BackupError, BackendError, TransferError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for ns, comps in units(manifest):
        for name, comp in comps.items():
            print(f"namespace {ns}: {name:<8} {len(comp['files'])} file(s) from {comp['source']}")
    print(
        f"backup written to {args.out} ({len(manifest['namespaces']) + 1} namespaces, "
        f"{len(manifest['sha256'])} files, checksummed)"
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
