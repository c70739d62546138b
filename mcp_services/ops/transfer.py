"""`tori-ops export` / `tori-ops import`: stream a vault's episodes through JSONL, between any
two backends, resumably, with a checksum on every line.

The file: a header line, then one line per episode in storage (seq) order::

    {"format": "tori-vault-export", "version": 1, "source": "sqlite var/data/vault.db",
     "namespace": "default", ...}
    {"seq": 17, "stored_ms": ..., "consolidated": true, "graph_version": 3, "tier": "LTM",
     "content_hash": "...", "sha256": "...", "body": "<base64 of the content's protobuf>"}

(with ``--readable``, ``"episode": {...protobuf JSON...}`` instead of ``body``; import reads both).

``content_hash`` is the vault's own hash of the episode (kept as is, so idempotent re-puts keep
working after a move); ``sha256`` covers the deterministic encoding of the content on the line,
so a line damaged in transit or by hand is refused on import with its line number.

Export is online and consistent per episode (a scan in seq order); ``--resume`` continues a
file after its last complete line (a torn last line is cut off). Import is idempotent (an id
already stored with the same content counts as existing), keeps each episode's storage time,
consolidation state and graph version, and with ``--resume`` skips what a progress file beside
the input says was already committed to the same target.

Namespaces: a file holds one namespace's store. Export takes the ``default`` namespace unless
``--namespace NS`` names another, and ``--all`` writes every namespace the fleet holds
(ops.fleet_namespaces) into a directory, one ``<ns>.jsonl`` each; the header names the namespace.
Import loads a file into the namespace its header names (``default`` for a file made before
namespaces), or into ``--namespace NS``; ``--all`` loads every ``*.jsonl`` of a directory. One
namespace stays the default (not every one) because a file is one store's stream: existing
scripts that export to a file keep their meaning, and ``--all`` is there to take every tenant.
Each line printed names its namespace.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from mcp_services.common.config import ConfigError, load_config
from mcp_services.common.namespaces import DEFAULT, InvalidNamespace, check_namespace
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.domain.backend import BackendError, VaultBackend
from mcp_services.episodic_vault.domain.model import Episode, PutStatus, Tier
from mcp_services.episodic_vault.namespaces import namespace_config
from mcp_services.episodic_vault.rpc.codec import content_to_proto
from mcp_services.episodic_vault.rpc.validation import InvalidEpisode, validate_episode
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.ops.backend_spec import SpecError, describe, vault_config
from mcp_services.ops.fleet_namespaces import UnknownNamespaces, fleet_namespaces

FORMAT = "tori-vault-export"
VERSION = 1
SCAN_PAGE = 1000


class TransferError(Exception):
    """The file or a line of it cannot be used; the message names the line and the fix."""


def episode_line(ep: Episode, readable: bool = False) -> str:
    """One record. The content travels as base64 of its deterministic protobuf encoding
    (``body``), or with ``readable`` as protobuf JSON (``episode``), for people and tools that
    want to look inside: measured on 5000 episodes with 384-d embeddings, export 7.2 s instead
    of 0.85 s, import 4.1 s instead of 1.2 s, and a 1.8x larger file."""
    msg = content_to_proto(ep)
    encoded = msg.SerializeToString(deterministic=True)
    record: dict[str, Any] = {
        "seq": ep.seq,
        "stored_ms": ep.stored_ms,
        "consolidated": ep.consolidated,
        "graph_version": ep.graph_version,
        "tier": ep.tier.name,
        "content_hash": ep.content_hash,
        "sha256": hashlib.sha256(encoded).hexdigest(),
    }
    if readable:
        record["episode"] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    else:
        record["body"] = base64.b64encode(encoded).decode("ascii")
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def iter_backend(backend: VaultBackend, after_seq: int = 0) -> Iterator[Episode]:
    """Every episode with seq > after_seq, in seq order, a page at a time."""
    cursor = after_seq
    while True:
        page = backend.scan(cursor, SCAN_PAGE, False)
        if not page:
            return
        yield from page
        cursor = page[-1].seq


def _last_complete_seq(path: Path) -> int:
    """The seq of the file's last complete line; a torn last line is cut off the file."""
    with path.open("rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)
    lines = data[:end].splitlines()
    if not lines:
        raise TransferError(f"{path}: empty file; export again without --resume")
    header = json.loads(lines[0])
    if header.get("format") != FORMAT:
        raise TransferError(f"{path}: not a {FORMAT} file; choose another --out")
    return int(json.loads(lines[-1])["seq"]) if len(lines) > 1 else 0


def export(
    backend: VaultBackend,
    source: str,
    out: Path,
    resume: bool,
    readable: bool = False,
    namespace: str = DEFAULT,
) -> tuple[int, int]:
    """Write (or continue) the export of ``namespace``'s store ``backend``; returns (episodes
    written now, last seq)."""
    after = 0
    if resume and out.exists():
        after = _last_complete_seq(out)
        mode = "a"
    else:
        mode = "w"
    written = 0
    last = after
    with out.open(mode, encoding="utf-8") as f:
        if mode == "w":
            header = {
                "format": FORMAT,
                "version": VERSION,
                "source": source,
                "namespace": namespace,
                "exported_at_ms": int(time.time() * 1000),
            }
            f.write(json.dumps(header, sort_keys=True) + "\n")
        for ep in iter_backend(backend, after):
            f.write(episode_line(ep, readable) + "\n")
            written += 1
            last = ep.seq
        f.flush()
        os.fsync(f.fileno())
    return written, last


@dataclasses.dataclass
class ImportCounts:
    created: int = 0
    existing: int = 0
    consolidated: int = 0
    skipped: int = 0  # already committed by an earlier --resume run


def parse_line(line: str, lineno: int, cfg: Any) -> Episode:
    """The stored Episode a line describes, checked against its checksum and the target's rules."""
    try:
        rec = json.loads(line)
        if "body" in rec:  # the checksum covers these very bytes
            encoded = base64.b64decode(rec["body"], validate=True)
            msg = episodic_pb2.Episode.FromString(encoded)
        else:
            msg = json_format.ParseDict(rec["episode"], episodic_pb2.Episode())
            encoded = msg.SerializeToString(deterministic=True)
    except (ValueError, KeyError, json_format.ParseError, DecodeError) as exc:
        raise TransferError(f"line {lineno}: not an episode record ({exc})") from None
    if hashlib.sha256(encoded).hexdigest() != rec.get("sha256"):
        raise TransferError(
            f"line {lineno}: checksum mismatch, the line was altered after export; "
            "export that episode again"
        )
    try:
        ep = validate_episode(msg, cfg, int(rec["stored_ms"]), field=f"line {lineno}: episode")
    except InvalidEpisode as exc:
        raise TransferError(f"{exc}; the target vault's limits refuse it") from None
    return dataclasses.replace(
        ep,
        content_hash=str(rec["content_hash"]),
        stored_ms=int(rec["stored_ms"]),
        consolidated=bool(rec["consolidated"]),
        graph_version=int(rec["graph_version"]),
        tier=Tier[str(rec["tier"])],
    )


def _records(f: IO[bytes], start_line: int) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset after the line, text) from the line after start_line."""
    offset = f.tell()
    for lineno, raw in enumerate(f, start=start_line + 1):
        offset += len(raw)
        if not raw.endswith(b"\n"):
            raise TransferError(
                f"line {lineno}: incomplete (the file ends mid-line); finish the export with "
                "tori-ops export --resume"
            )
        line = raw.decode("utf-8")
        if line.strip():
            yield lineno, offset, line


def import_file(
    backend: VaultBackend, cfg: Any, src: Path, target: str, resume: bool, batch: int = 500
) -> ImportCounts:
    """Import the file into the backend; see the module docstring."""
    progress_file = src.with_name(src.name + ".import-progress.json")
    counts = ImportCounts()
    with src.open("rb") as f:
        header_line = f.readline()
        try:
            header = json.loads(header_line)
        except ValueError:
            header = {}
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise TransferError(
                f"{src}: line 1 is not a {FORMAT} v{VERSION} header; export the data with "
                "tori-ops export"
            )
        start_line = 1
        if resume and progress_file.exists():
            progress = json.loads(progress_file.read_text())
            if progress.get("target") == target:
                f.seek(int(progress["offset"]))
                start_line = int(progress["line"])
                counts.skipped = int(progress["episodes"])
        pending: list[Episode] = []
        done_episodes = counts.skipped

        def flush(offset: int, lineno: int) -> None:
            nonlocal pending, done_episodes
            # put_many takes one storage time per call: group runs with equal stored_ms.
            run: list[Episode] = []
            for ep in pending:
                if run and run[0].stored_ms != ep.stored_ms:
                    _put_run(backend, run, counts)
                    run = []
                run.append(ep)
            if run:
                _put_run(backend, run, counts)
            done_episodes += len(pending)
            pending = []
            tmp = progress_file.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {"target": target, "offset": offset, "line": lineno, "episodes": done_episodes}
                )
            )
            tmp.replace(progress_file)

        lineno, offset = start_line, f.tell()
        for lineno, offset, line in _records(f, start_line):
            pending.append(parse_line(line, lineno, cfg))
            if len(pending) >= batch:
                flush(offset, lineno)
        if pending:
            flush(offset, lineno)
    return counts


def _put_run(backend: VaultBackend, run: list[Episode], counts: ImportCounts) -> None:
    # Stored as written by a client, then consolidated through the backend's own transition so
    # the tier, the graph version and the counters move together.
    fresh = [
        dataclasses.replace(ep, consolidated=False, graph_version=0, tier=Tier.MTM) for ep in run
    ]
    outcomes = backend.put_many(fresh, run[0].stored_ms)
    for o in outcomes:
        if o.status == PutStatus.CREATED:
            counts.created += 1
        else:
            counts.existing += 1
    by_version: dict[int, list[str]] = {}
    for ep in run:
        if ep.consolidated:
            # Episodes consolidated before versions were recorded carry 0; the API needs > 0.
            by_version.setdefault(max(1, ep.graph_version), []).append(ep.id)
    for version, ids in by_version.items():
        counts.consolidated += backend.mark_consolidated(ids, version).marked


def _namespace_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help=f"the namespace to {verb} (default: {DEFAULT}"
        + ("; the file's own namespace on import)" if verb == "import into" else ")")
        + "; with --all, a name to add to those found (a PostgreSQL schema does not name its own)",
    )


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        help="KIND[:key=value,...] (e.g. sqlite:path=var/data/vault.db); default: the configured",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the JSONL file to write; with --all, a directory (one <namespace>.jsonl each)",
    )
    _namespace_arguments(p, "export")
    p.add_argument("--all", action="store_true", help="export every namespace the fleet holds")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted export of the same file"
    )
    p.add_argument(
        "--readable",
        action="store_true",
        help="write each episode as protobuf JSON instead of base64 protobuf (slower, larger)",
    )


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="the target, KIND[:key=value,...]; default: the configured")
    p.add_argument(
        "--in",
        dest="src",
        type=Path,
        required=True,
        help="the JSONL file to read; with --all, a directory of <namespace>.jsonl files",
    )
    _namespace_arguments(p, "import into")
    p.add_argument(
        "--all", action="store_true", help="import every file of the --in directory, each into "
        "the namespace its header names",
    )  # fmt: skip
    p.add_argument(
        "--resume", action="store_true", help="skip what an interrupted import already committed"
    )
    p.add_argument("--batch", type=int, default=500, help="episodes per transaction (default 500)")


def file_namespace(path: Path) -> str:
    """The namespace an export file's header names (``default`` for a file made before
    namespaces); TransferError when the name breaks the namespace rule."""
    try:
        with path.open("rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return DEFAULT  # import_file says what is wrong with the file
    name = header.get("namespace", DEFAULT) if isinstance(header, dict) else DEFAULT
    try:
        return check_namespace(str(name), f"{path}: line 1: namespace")
    except InvalidNamespace as exc:
        raise TransferError(str(exc)) from None


def _chosen(args: argparse.Namespace, cfg: VaultConfig) -> list[str] | None:
    """The namespaces to export: one (--namespace, default `default`) or, with --all, every one
    the fleet holds; None after printing why the arguments cannot be used."""
    try:
        for ns in args.namespace:
            check_namespace(ns, "--namespace")
        if args.all:
            settings = load_config().model_copy(update={"vault": cfg})
            return fleet_namespaces(settings, args.namespace)
    except (InvalidNamespace, UnknownNamespaces, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if len(args.namespace) > 1:
        print("error: --namespace: give one namespace, or --all for every one", file=sys.stderr)
        return None
    return args.namespace or [DEFAULT]


def run_export(args: argparse.Namespace) -> int:
    try:
        cfg = vault_config(args.backend)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = _chosen(args, cfg)
    if names is None:
        return 2
    if args.all:
        args.out.mkdir(parents=True, exist_ok=True)

    def work(backend: VaultBackend, own: VaultConfig, ns: str, out: Path) -> str:
        written, last = export(backend, describe(own), out, args.resume, args.readable, ns)
        return f"exported {written} episodes from {describe(own)} to {out} (last seq {last})"

    jobs = [(ns, args.out / f"{ns}.jsonl" if args.all else args.out) for ns in names]
    return _per_namespace(cfg, jobs, work)


def run_import(args: argparse.Namespace) -> int:
    if args.batch < 1:
        print("error: --batch must be >= 1", file=sys.stderr)
        return 2
    if len(args.namespace) > 1 or (args.all and args.namespace):
        print(
            "error: --namespace: give one namespace for one file; with --all each file goes to "
            "the namespace its header names",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = vault_config(args.backend)
        files = sorted(args.src.glob("*.jsonl")) if args.all else [args.src]
        plan = [(f, args.namespace[0] if args.namespace else file_namespace(f)) for f in files]
        if args.namespace:
            check_namespace(args.namespace[0], "--namespace")
    except (SpecError, InvalidNamespace, TransferError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def work(backend: VaultBackend, own: VaultConfig, ns: str, src: Path) -> str:
        counts = import_file(backend, own, src, describe(own), args.resume, args.batch)
        return (
            f"imported {src.name} into {describe(own)}: {counts.created} created, "
            f"{counts.existing} existing, {counts.consolidated} marked consolidated, "
            f"{counts.skipped} skipped (resume)"
        )

    return _per_namespace(cfg, [(ns, src) for src, ns in plan], work)


def _per_namespace(
    cfg: VaultConfig,
    jobs: list[tuple[str, Path]],
    work: Callable[[VaultBackend, VaultConfig, str, Path], str],
) -> int:
    """Run ``work`` on each (namespace, file) with the namespace's store open; one line each,
    naming the namespace. Exit 2 when a store cannot be opened, 1 when the work fails."""
    for ns, path in jobs:
        own = namespace_config(cfg, ns)
        start = time.perf_counter()
        try:
            backend = open_backend(own)
        except BackendError as exc:
            print(f"error: namespace {ns}: {exc}", file=sys.stderr)
            return 2
        try:
            done = work(backend, own, ns, path)
        except (TransferError, BackendError, OSError) as exc:
            print(f"error: namespace {ns}: {exc}", file=sys.stderr)
            return 1
        finally:
            backend.close()
        print(f"namespace {ns}: {done} in {time.perf_counter() - start:.1f} s")
    return 0


def main_export(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tori-ops export", description=__doc__)
    add_export_arguments(p)
    return run_export(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main_export())
