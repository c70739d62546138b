"""A full disk (issue 16, defect 6), on a real 4 MB tmpfs holding the vault's SQLite file and index:
writes are RESOURCE_EXHAUSTED naming the path and the free space, nothing acknowledged is lost,
SIGTERM ends cleanly with a warning instead of a traceback, a restart on the full disk comes up
read-only (reads, lists and deletes served), and writes resume in that process once space is
freed.

Needs root to mount the tmpfs; skipped, saying why, otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from mcp_services.episodic_vault.adapters.memory_backend import MemoryBackend
from mcp_services.episodic_vault.settings import MemoryConfig
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from tests.conftest import service_environ
from tests.episodic_vault.conftest import VaultFactory, good_episode
from tests.episodic_vault.test_backend_contract import make_ep
from tests.faults.test_vault_faults import start_vault, stub_for

pytestmark = pytest.mark.fleet

# Taken by a file before the vault starts, so deleting it frees space the vault can use.
FILLER_BYTES = 1 << 20
PAYLOAD_BYTES = 20_000
RESERVE_BYTES = 256 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for the test (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs -o size=4m)")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(path: Path) -> None:
    """Write `path` until its device is full."""
    try:
        with path.open("wb", buffering=0) as f:
            while True:
                f.write(os.urandom(64 * 1024))
    except OSError:
        pass


def _episode(i: int) -> pb.Episode:
    ep = good_episode(i)
    ep.payload = os.urandom(PAYLOAD_BYTES)  # incompressible, so the disk really fills
    return ep


def _refusal(stub: object, ep: pb.Episode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.PutEpisode(pb.PutEpisodeRequest(episode=ep), timeout=30)  # type: ignore[attr-defined]
    return err.value


def _ids(stub: object) -> set[str]:
    reply = stub.ListRecent(pb.ListRecentRequest(page_size=1000), timeout=30)  # type: ignore[attr-defined]
    return {e.id for e in reply.episodes}


class TestDiskFull:
    def test_full_disk_refuses_writes_keeps_data_and_reopens_read_only(
        self, tmp_path: Path, small_disk: Path
    ) -> None:
        """Fill the vault's disk through puts, then SIGTERM, restart and free space."""
        filler = small_disk / "filler.bin"
        filler.write_bytes(os.urandom(FILLER_BYTES))
        env = service_environ(
            tmp_path / "var",
            VAULT_SQLITE_PATH=str(small_disk / "vault.db"),
            VAULT_EMBEDDING_DIM="8",
            VAULT_DISK_RESERVE_BYTES=str(RESERVE_BYTES),
            LOG_LEVEL="info",
        )
        log = tmp_path / "vault.log"
        vault = start_vault(env, log)
        channel, stub = stub_for(env)
        try:
            acked: list[str] = []
            refused: grpc.RpcError | None = None
            for i in range(1000):  # 4 MB / 20 KB: full long before
                try:
                    stub.PutEpisode(pb.PutEpisodeRequest(episode=_episode(i)), timeout=30)
                    acked.append(f"ep-{i}")
                except grpc.RpcError as exc:
                    refused = exc
                    break
            assert refused is not None, "the 4 MB disk never filled"
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            details = refused.details() or ""
            assert str(small_disk) in details and "free on its device" in details, details
            # A streamed batch is refused the same way, and none of it is stored.
            with pytest.raises(grpc.RpcError) as err:
                stub.PutEpisodes(
                    iter(pb.PutEpisodeRequest(episode=_episode(5000 + k)) for k in range(5)),
                    timeout=30,
                )
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert str(small_disk) in (err.value.details() or ""), err.value.details()
            assert _ids(stub) == set(acked)
            print(f"{len(acked)} puts acknowledged before the disk was full: {details}")

            # SIGTERM on the full disk: a clean exit; the index that cannot be saved is a warning.
            vault.signal(signal.SIGTERM)
            assert vault.wait(60) == 0, vault.tail()
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, text[-3000:]
            assert "vault_index_save_failed" in text, text[-3000:]

            # Whatever the shutdown freed (the WAL) is taken while the vault is down: a restart
            # on the full disk comes up read-only and serves what it holds.
            _fill(small_disk / "filler-2.bin")
            vault = start_vault(env, log)
            assert "vault_read_only" in log.read_text(errors="replace"), vault.tail()
            assert _ids(stub) == set(acked)
            got = stub.GetEpisode(pb.GetEpisodeRequest(id=acked[0]), timeout=30).episode
            assert got.id == acked[0] and len(got.payload) == PAYLOAD_BYTES
            still = _refusal(stub, _episode(9000))
            assert still.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "read-only" in (still.details() or ""), still.details()
            # The delete runs on the reserve the vault held back.
            assert stub.DeleteEpisode(pb.DeleteEpisodeRequest(id=acked[-1]), timeout=30).deleted
            assert "vault_disk_reserve_released" in log.read_text(errors="replace")
            assert _ids(stub) == set(acked[:-1])

            # Space freed: writes resume in this process, no restart.
            filler.unlink()
            (small_disk / "filler-2.bin").unlink()
            reply = stub.PutEpisode(pb.PutEpisodeRequest(episode=_episode(9001)), timeout=30)
            assert reply.result.status == pb.PUT_STATUS_CREATED
            assert "vault_writable_again" in log.read_text(errors="replace")
            assert _ids(stub) == {*acked[:-1], "ep-9001"}
        finally:
            channel.close()
            vault.stop()


class TestSnapshotOnFullDisk:
    def test_memory_snapshot_that_cannot_be_written_is_a_warning(self, small_disk: Path) -> None:
        """The memory backend's snapshot on a full disk: close() logs vault_snapshot_failed
        with the path instead of raising, leaves no partial file, and the last snapshot that
        was written still loads."""
        path = small_disk / "vault.snapshot"
        cfg = MemoryConfig(snapshot_file=str(path), snapshot_interval_s=3600)
        backend = MemoryBackend(cfg, path)
        backend.put_many([make_ep(i) for i in range(3)], 1)
        backend.snapshot()
        _fill(small_disk / "filler.bin")
        big = [
            dataclasses.replace(make_ep(i), payload=os.urandom(PAYLOAD_BYTES)) for i in range(3, 60)
        ]
        backend.put_many(big, 2)
        with capture_logs() as logs:
            backend.close()
        failed = [e for e in logs if e["event"] == "vault_snapshot_failed"]
        assert failed and failed[0]["path"] == str(path), logs
        assert "free on its device" in failed[0]["free"]
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin", "vault.snapshot"]
        (small_disk / "filler.bin").unlink()
        reopened = MemoryBackend(cfg, path)
        try:
            assert reopened.totals()[0] == 3
        finally:
            reopened.close()


class TestReserve:
    def test_one_reserve_per_vault_whatever_the_namespaces(self, start_vault: VaultFactory) -> None:
        """The disk reserve sits beside the default store's SQLite file; a namespace's store,
        under namespaces/<ns>/, shares it instead of holding its own."""
        v = start_vault(vault={"embedding_dim": 8, "disk_reserve_bytes": 64 * 1024})
        acme = (("x-tori-namespace", "acme"),)
        v.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(1)), metadata=acme)
        data = Path(v.settings.vault.sqlite.path).parent
        assert (data / "namespaces" / "acme").is_dir()
        reserves = sorted(p.relative_to(data) for p in data.rglob(".vault-disk-reserve"))
        assert reserves == [Path(".vault-disk-reserve")]
        assert (data / ".vault-disk-reserve").stat().st_size == 64 * 1024
