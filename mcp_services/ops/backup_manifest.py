"""A backup's manifest and files, checked as untrusted input before a restore writes anything.

The manifest (``manifest.json`` at the top of a backup directory)::

    {"format": "tori-backup", "version": 2, "created_at_ms": ..., "environment": ...,
     "components": {"vault": {...}, "graphs": {...}, "pruner": {...}, "koopman": {...}},
     "namespaces": {"bob": {"vault": {...}, "graphs": {...}, "pruner": {...}, "koopman": {...}}},
     "sha256": {"vault/vault.db": "<hex>", "namespaces/bob/graphs/v000000000001.npz": ..., ...},
     "hmac": "<hex>"}

``components`` is the default namespace, where a backup made before namespaces (version 1, no
``namespaces``) keeps everything; each other namespace's files lie under ``namespaces/<ns>/``.
Checked: every namespace name follows the namespace rule (common.namespaces), every listed file is
a plain name (no path, no ``..``) with a checksum, every checksum names a listed file, every
directory and file on the way is real (a symlink or a device is refused), the checksums hold, and
with a backup key the HMAC over the whole manifest (namespaces included) verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcp_services.common.namespaces import DEFAULT, FORM, NAMESPACE_RE, NAMESPACES_DIR

MANIFEST = "manifest.json"
FORMAT = "tori-backup"
VERSION = 2  # 2: namespaces; 1 (before them) still restores
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unit_prefix(namespace: str) -> str:
    """Where a namespace's component directories lie inside a backup ("" for the default)."""
    return "" if namespace == DEFAULT else f"{NAMESPACES_DIR}/{namespace}/"


def units(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(namespace, its components), the default first, from a checked manifest."""
    yield DEFAULT, manifest["components"]
    yield from sorted(manifest.get("namespaces", {}).items())


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


def _refuse(what: str) -> BackupError:
    return BackupError(f"{what}; the backup was altered or damaged, and nothing was restored")


def _check_unit(comps: Any, where: str, prefix: str, sums: dict[str, Any]) -> set[str]:
    """One namespace's components: known, plain file names, one checksum each; the files."""
    if not isinstance(comps, dict) or set(comps) != set(COMPONENTS):
        raise _refuse(f"{where} must be exactly {', '.join(COMPONENTS)}")
    listed: set[str] = set()
    for name in COMPONENTS:
        files = comps[name].get("files") if isinstance(comps[name], dict) else None
        if not isinstance(files, list):
            raise _refuse(f"{where}.{name}.files is not a list of file names")
        for f in files:
            if not isinstance(f, str) or not _PLAIN_NAME.fullmatch(f):
                raise _refuse(
                    f"{where}.{name}.files holds {f!r}, which is not a plain file name "
                    "(a backup names its files without any path)"
                )
            rel = f"{prefix}{name}/{f}"
            if rel not in sums:
                raise _refuse(f"{rel} is listed in {where}.{name} but has no checksum")
            listed.add(rel)
    kind, files = comps["vault"].get("kind"), comps["vault"]["files"]
    # A namespace other than the default may hold no vault store (only graphs, say).
    allowed = [[VAULT_FILES[str(kind)]]] if kind in VAULT_FILES else []
    if prefix and kind in VAULT_FILES:
        allowed.append([])
    if files not in allowed:
        raise _refuse(
            f"{where}.vault must be one of {', '.join(VAULT_FILES)} with its one file "
            f"(got kind {kind!r}, files {files!r})"
        )
    return listed


def check_layout(manifest: Any) -> dict[str, Any]:
    """The manifest's shape: valid namespaces, known components, plain names, one checksum each."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"not a {FORMAT} directory (the manifest's format is not {FORMAT!r})")
    if manifest.get("version") not in (1, VERSION):
        raise BackupError(
            f"the manifest's version {manifest.get('version')!r} is not one this release reads "
            f"(1 or {VERSION}); restore it with the release that made it"
        )
    sums = manifest.get("sha256")
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise _refuse("the manifest's sha256 is not a map of file to checksum")
    spaces = manifest.get("namespaces", {})
    if not isinstance(spaces, dict):
        raise _refuse("the manifest's namespaces is not a map of namespace to components")
    for ns in spaces:
        if not NAMESPACE_RE.fullmatch(ns) or ns == DEFAULT:
            raise _refuse(
                f"namespaces holds {ns[:70]!r}, which is not a namespace other than the "
                f"default's (give {FORM})"
            )
    listed = _check_unit(manifest.get("components"), "components", "", sums)
    for ns, comps in spaces.items():
        listed |= _check_unit(comps, f"namespaces.{ns}", unit_prefix(ns), sums)
    if extra := sorted(set(sums) - listed):
        raise _refuse(f"sha256 lists {', '.join(extra[:3])}, which no component names")
    return manifest


def regular_file(src: Path, rel: str) -> Path:
    """src/rel, refused unless every directory on the way and the file itself are real (no
    symlink, no device, no FIFO)."""
    parts = rel.split("/")
    path = src
    for i, part in enumerate(parts):
        path = path / part
        want = stat.S_ISREG if i == len(parts) - 1 else stat.S_ISDIR
        try:
            mode = path.lstat().st_mode
        except OSError as exc:
            raise _refuse(
                f"{path.relative_to(src)} is listed but missing ({exc.strerror})"
            ) from None
        if not want(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or directory"
            raise _refuse(f"{path.relative_to(src)} is {what}")
    return path


def copy_verified(path: Path, digest: str, dst: Path | None, rel: str) -> None:
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


def verify(src: Path, key: bytes | None) -> dict[str, Any]:
    """The manifest, once its shape, HMAC (with a key), files and checksums all hold."""
    try:
        if not stat.S_ISDIR(src.lstat().st_mode):
            raise BackupError(f"{src} is not a directory; give the backup's directory")
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(
            f"{src}/{MANIFEST} is missing or unreadable ({exc}); not a backup"
        ) from exc
    manifest = check_layout(manifest)
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
        copy_verified(regular_file(src, rel), digest, None, rel)
    return manifest
