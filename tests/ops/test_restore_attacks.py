"""tori-ops restore treats a backup as untrusted input: a tampered manifest, a smuggled path, a
symlink or a device in the backup is refused with the reason, before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import service_environ
from tests.ops.runner import ops
from tests.ops.test_backup import _populate


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (directories as None) with its bytes: 'nothing was written'."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def _edit(out: Path, change: object) -> None:
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)  # type: ignore[operator]
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real backup of a populated fleet, copied afresh by each test."""
    root = tmp_path_factory.mktemp("made")
    env = service_environ(root / "src")
    _populate(env)
    out = root / "backup"
    done = ops(env, "backup", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def backup(made: Path, tmp_path: Path) -> Path:
    out = tmp_path / "backup"
    shutil.copytree(made, out, symlinks=True)
    return out


class TestRefusedBeforeAnyWrite:
    def test_a_path_in_a_file_name_writes_nothing_outside_or_inside(
        self, backup: Path, tmp_path: Path
    ) -> None:
        """A manifest naming ../../victim (with a matching checksum) is refused; the victim file
        and the data directory stay as they were."""
        dst = tmp_path / "dst"
        victim = dst / "victim"
        victim.parent.mkdir(parents=True)
        victim.write_text("original")
        payload = backup / "victim"
        payload.write_text("attacker's bytes")

        def smuggle(m: dict) -> None:  # type: ignore[type-arg]
            m["components"]["graphs"]["files"].append("../../victim")
            m["sha256"]["graphs/../../victim"] = _sha(payload)

        _edit(backup, smuggle)
        before = _tree(dst)
        r = ops(service_environ(dst / "var-root"), "restore", "--from", str(backup))
        assert r.returncode == 1
        assert "'../../victim', which is not a plain file name" in r.stderr
        assert "nothing was restored" in r.stderr
        assert victim.read_text() == "original" and _tree(dst) == before

    def test_a_listed_file_without_a_checksum_is_refused(
        self, backup: Path, tmp_path: Path
    ) -> None:
        """A file that components list but sha256 does not is never restored unverified."""
        (backup / "graphs" / "v000000000009.npz").write_bytes(b"unverified")
        _edit(backup, lambda m: m["components"]["graphs"]["files"].append("v000000000009.npz"))
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(backup))
        assert r.returncode == 1 and "graphs/v000000000009.npz" in r.stderr
        assert "has no checksum" in r.stderr and _tree(dst) == {}

    def test_a_checksum_no_component_names_is_refused(self, backup: Path, tmp_path: Path) -> None:
        """sha256 entries must each be a listed file (no second way to name a path)."""
        _edit(backup, lambda m: m["sha256"].__setitem__("../escape", "0" * 64))
        r = ops(service_environ(tmp_path / "dst"), "restore", "--from", str(backup))
        assert r.returncode == 1 and "which no component names" in r.stderr

    def test_a_symlink_in_the_backup_is_refused_even_with_the_right_bytes(
        self, backup: Path, tmp_path: Path
    ) -> None:
        """A file replaced by a link to identical bytes elsewhere is still refused: restore
        reads only regular files inside the backup."""
        real = backup / "pruner" / "b-000001.npz"
        elsewhere = tmp_path / "elsewhere.npz"
        elsewhere.write_bytes(real.read_bytes())
        real.unlink()
        real.symlink_to(elsewhere)
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(backup))
        assert r.returncode == 1 and "pruner/b-000001.npz is a symbolic link" in r.stderr
        assert _tree(dst) == {}

    def test_a_symlinked_component_directory_is_refused(self, backup: Path, tmp_path: Path) -> None:
        """A component directory that is a link (to a copy of itself) is refused."""
        moved = tmp_path / "graphs-elsewhere"
        (backup / "graphs").rename(moved)
        (backup / "graphs").symlink_to(moved, target_is_directory=True)
        r = ops(service_environ(tmp_path / "dst"), "restore", "--from", str(backup))
        assert r.returncode == 1 and "graphs is a symbolic link" in r.stderr

    def test_a_device_or_fifo_is_refused_without_being_opened(
        self, backup: Path, tmp_path: Path
    ) -> None:
        """A FIFO in place of a file is refused by its type (reading it would block forever)."""
        state = backup / "koopman" / "state.npz"
        state.unlink()
        os.mkfifo(state)
        r = ops(service_environ(tmp_path / "dst"), "restore", "--from", str(backup))
        assert r.returncode == 1
        assert "koopman/state.npz is not a regular file or directory" in r.stderr

    def test_a_non_empty_directory_stops_restore_before_the_vault_is_written(
        self, backup: Path, tmp_path: Path
    ) -> None:
        """Without --force, existing graphs refuse the restore before vault.db is written (the
        old restore wrote the vault first, then failed half-way)."""
        dst = tmp_path / "dst"
        graphs = dst / "graphs"
        graphs.mkdir(parents=True)
        (graphs / "v000000000001.npz").write_bytes(b"existing graph")
        before = _tree(dst)
        r = ops(service_environ(dst), "restore", "--from", str(backup))
        assert r.returncode == 1 and "is not empty; pass --force" in r.stderr
        assert _tree(dst) == before and not list(dst.rglob("vault.db*"))


class TestAuthenticatedManifest:
    @pytest.fixture
    def key_file(self, tmp_path: Path) -> Path:
        path = tmp_path / "backup.key"
        path.write_text("k" * 32 + "\n")
        return path

    def test_a_keyed_backup_restores_and_any_edit_is_refused(
        self, tmp_path: Path, key_file: Path
    ) -> None:
        """With a backup key the manifest carries an HMAC: it restores with the key, and an edit
        that keeps every checksum consistent is still refused, as is a wrong key."""
        env = service_environ(tmp_path / "src")
        _populate(env)
        out = tmp_path / "keyed"
        assert ops(env, "backup", "--out", str(out), "--key-file", str(key_file)).returncode == 0
        assert "hmac" in json.loads((out / "manifest.json").read_text())
        good = ops(
            service_environ(tmp_path / "ok"), "restore", "--from", str(out), "--key-file",
            str(key_file),
        )  # fmt: skip
        assert good.returncode == 0, good.stderr

        wrong = tmp_path / "wrong.key"
        wrong.write_text("w" * 32)
        r = ops(
            service_environ(tmp_path / "w"), "restore", "--from", str(out), "--key-file",
            str(wrong),
        )  # fmt: skip
        assert r.returncode == 1 and "HMAC does not verify" in r.stderr

        _edit(out, lambda m: m.__setitem__("environment", "tampered"))
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(out), "--key-file", str(key_file))
        assert r.returncode == 1 and "HMAC does not verify" in r.stderr and _tree(dst) == {}

    def test_a_key_refuses_a_manifest_without_hmac(
        self, backup: Path, tmp_path: Path, key_file: Path
    ) -> None:
        """An unsigned backup is refused where a key is configured (TORI_BACKUP_KEY_FILE)."""
        env = service_environ(tmp_path / "dst", TORI_BACKUP_KEY_FILE=str(key_file))
        r = ops(env, "restore", "--from", str(backup))
        assert r.returncode == 1 and "carries no HMAC" in r.stderr
