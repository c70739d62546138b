"""tori-ops restore treats a backup as untrusted input: a tampered manifest, a smuggled path, a
symlink or a device in the backup is refused with the reason, before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from mcp_services.common.namespaces import DEFAULT
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


def _make_backup(root: Path, *namespaces: str) -> Path:
    """A real backup of a fleet populated in the default namespace and ``namespaces``."""
    env = service_environ(root / "src")
    for ns in (DEFAULT, *namespaces):
        _populate(env, ns)
    out = root / "backup"
    done = ops(env, "backup", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real backup of a populated fleet, copied afresh by each test."""
    return _make_backup(tmp_path_factory.mktemp("made"))


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


@pytest.fixture(scope="module")
def made_ns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real backup of a fleet with the default namespace and bob."""
    return _make_backup(tmp_path_factory.mktemp("made_ns"), "bob")


@pytest.fixture
def backup_ns(made_ns: Path, tmp_path: Path) -> Path:
    out = tmp_path / "backup"
    shutil.copytree(made_ns, out, symlinks=True)
    return out


def _rename_namespace(backup: Path, old: str, new: str) -> None:
    """Move a namespace's entry (components and checksums) to another name in the manifest,
    its files to where that name points, so only the name is wrong."""

    def rename(m: dict) -> None:  # type: ignore[type-arg]
        m["namespaces"][new] = m["namespaces"].pop(old)
        m["sha256"] = {
            (f"namespaces/{new}/" + k[len(f"namespaces/{old}/") :])
            if k.startswith(f"namespaces/{old}/")
            else k: v
            for k, v in m["sha256"].items()
        }

    _edit(backup, rename)


class TestNamespacesRefusedBeforeAnyWrite:
    @pytest.mark.parametrize(
        ("name", "said"),
        [
            ("../x", "namespaces holds '../x', which is not a namespace"),
            ("..", "namespaces holds '..', which is not a namespace"),
            ("bad name", "namespaces holds 'bad name', which is not a namespace"),
            ("default", "namespaces holds 'default', which is not a namespace other than"),
        ],
    )
    def test_a_namespace_name_that_breaks_the_rule_writes_nothing(
        self, backup_ns: Path, tmp_path: Path, name: str, said: str
    ) -> None:
        """A manifest naming a namespace outside the namespace rule (a path, a space, the
        default twice) is refused before the first write, whatever its checksums say."""
        _rename_namespace(backup_ns, "bob", name)
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(backup_ns))
        assert r.returncode == 1 and said in r.stderr and "nothing was restored" in r.stderr
        assert _tree(dst) == {} and not (tmp_path / "x").exists()

    def test_a_path_in_a_namespace_file_name_is_refused(
        self, backup_ns: Path, tmp_path: Path
    ) -> None:
        """A namespace's file list holding ../../victim is refused like the default's."""
        payload = backup_ns / "namespaces" / "victim"
        payload.write_text("attacker's bytes")

        def smuggle(m: dict) -> None:  # type: ignore[type-arg]
            m["namespaces"]["bob"]["graphs"]["files"].append("../../victim")
            m["sha256"]["namespaces/bob/graphs/../../victim"] = _sha(payload)

        _edit(backup_ns, smuggle)
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(backup_ns))
        assert r.returncode == 1
        assert "namespaces.bob.graphs.files holds '../../victim'" in r.stderr
        assert _tree(dst) == {}

    def test_a_namespace_file_without_a_checksum_is_refused(
        self, backup_ns: Path, tmp_path: Path
    ) -> None:
        """A file bob's components list but sha256 does not is never restored unverified."""
        (backup_ns / "namespaces" / "bob" / "pruner" / "b-000009.npz").write_bytes(b"unverified")
        _edit(
            backup_ns,
            lambda m: m["namespaces"]["bob"]["pruner"]["files"].append("b-000009.npz"),
        )
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(backup_ns))
        assert r.returncode == 1 and "namespaces/bob/pruner/b-000009.npz" in r.stderr
        assert "has no checksum" in r.stderr and _tree(dst) == {}

    def test_a_symlinked_namespace_directory_is_refused(
        self, backup_ns: Path, tmp_path: Path
    ) -> None:
        """bob's directory in the backup replaced by a link to an identical copy is refused."""
        moved = tmp_path / "bob-elsewhere"
        (backup_ns / "namespaces" / "bob").rename(moved)
        (backup_ns / "namespaces" / "bob").symlink_to(moved, target_is_directory=True)
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(backup_ns))
        assert r.returncode == 1 and "namespaces/bob is a symbolic link" in r.stderr
        assert _tree(dst) == {}

    def test_existing_data_of_a_namespace_stops_restore_before_any_write(
        self, backup_ns: Path, tmp_path: Path
    ) -> None:
        """Without --force, bob's existing learner state refuses the restore before the default
        namespace's vault or any other file is written."""
        dst = tmp_path / "dst"
        state = dst / "data" / "koopman" / "namespaces" / "bob" / "state.npz"
        state.parent.mkdir(parents=True)
        state.write_bytes(b"bob's current state")
        before = _tree(dst)
        r = ops(service_environ(dst), "restore", "--from", str(backup_ns))
        assert r.returncode == 1 and "namespace bob: " in r.stderr and "pass --force" in r.stderr
        assert _tree(dst) == before


class TestNamespacesCompatibleAndAuthenticated:
    def test_a_backup_made_before_namespaces_still_restores(
        self, backup: Path, tmp_path: Path
    ) -> None:
        """A version 1 manifest without a namespaces section restores the default namespace."""

        def old(m: dict) -> None:  # type: ignore[type-arg]
            m["version"] = 1
            del m["namespaces"]

        _edit(backup, old)
        r = ops(service_environ(tmp_path / "dst"), "restore", "--from", str(backup))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "dst" / "graphs" / "v000000000002.npz").exists()

    def test_the_hmac_covers_the_namespaces(self, tmp_path: Path) -> None:
        """Dropping bob from a keyed manifest (and his checksums, so the rest is consistent) is
        refused: the HMAC is over the whole manifest, namespaces included."""
        key = tmp_path / "backup.key"
        key.write_text("k" * 32)
        env = service_environ(tmp_path / "src")
        _populate(env)
        _populate(env, "bob")
        out = tmp_path / "keyed"
        assert ops(env, "backup", "--out", str(out), "--key-file", str(key)).returncode == 0

        def drop_bob(m: dict) -> None:  # type: ignore[type-arg]
            del m["namespaces"]["bob"]
            m["sha256"] = {k: v for k, v in m["sha256"].items() if "namespaces/" not in k}

        _edit(out, drop_bob)
        dst = tmp_path / "dst"
        r = ops(service_environ(dst), "restore", "--from", str(out), "--key-file", str(key))
        assert r.returncode == 1 and "HMAC does not verify" in r.stderr and _tree(dst) == {}
