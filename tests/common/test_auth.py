"""Service keys and roles: the key file format, the role table, and enforcement on real servers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from mcp_services.common.auth import (
    METHOD_ROLES,
    ApiKeyInterceptor,
    AuthConfigError,
    Role,
    current_principal,
    key_digest,
    load_service_keys,
    own_key,
)
from mcp_services.common.config_schema import AuthConfig
from mcp_services.common.server import ServerThread, StartupError, is_loopback
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.koopman.v1 import koopman_pb2, koopman_pb2_grpc
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.koopman_learner.server import KoopmanLearnerService
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.common.reloading import served, wait_for, write_atomically
from tests.conftest import SettingsFactory, service_environ
from tests.episodic_vault.conftest import good_episode

ADMIN, WRITER, READER = "admin-key-0123456789", "write-key-0123456789", "read-key-0123456789"
SERVICE_PROTOS = (episodic_pb2, sleep_pb2, pruner_pb2, koopman_pb2)


def keys_file(tmp_path: Path, text: str) -> AuthConfig:
    path = tmp_path / "api_keys"
    path.write_text(text)
    return AuthConfig(api_keys_file=str(path))


class TestKeyFile:
    def test_key_role_and_namespaces_are_read_and_a_bare_key_is_admin(self, tmp_path: Path) -> None:
        """KEY is admin over every namespace; KEY ROLE and KEY ROLE NAMESPACES set both."""
        cfg = keys_file(tmp_path, "# ops\nbare\n\nr1 read\nw1 WRITE alice,bob\na1 admin *\n")
        keys = load_service_keys(cfg)
        assert [(k.key, k.role, k.namespaces) for k in keys] == [
            ("bare", Role.ADMIN, None),
            ("r1", Role.READ, None),
            ("w1", Role.WRITE, frozenset({"alice", "bob"})),
            ("a1", Role.ADMIN, None),
        ]
        assert keys[2].principal.key_digest == key_digest("w1") and "w1" not in repr(keys[2])
        assert keys[2].principal.may_use("alice") and not keys[2].principal.may_use("carol")

    @pytest.mark.parametrize(
        ("line", "phrase"),
        [
            ("sekrit-key owner", "role is not read, write or admin"),
            ("sekrit-key read a b", "4 fields"),
            ("sekrit-key read ../etc", "namespace '../etc' is not a name"),
            ("sekrit-key read ,", "is not a name"),
        ],
    )
    def test_a_malformed_line_names_file_line_and_fix_never_the_key(
        self, tmp_path: Path, line: str, phrase: str
    ) -> None:
        """A malformed line is an AuthConfigError naming the file, the line number and the fix,
        without the key in it."""
        cfg = keys_file(tmp_path, f"good admin\n{line}\n")
        with pytest.raises(AuthConfigError) as err:
            load_service_keys(cfg)
        text = str(err.value)
        assert f"{cfg.api_keys_file} line 2" in text and phrase in text
        assert "KEY ROLE NAMESPACES" in text and "sekrit-key" not in text

    def test_the_fleets_own_key_is_the_first_admin_key(self) -> None:
        """Callers of the fleet send the first admin key over every namespace, else the first."""
        cfg = AuthConfig(api_keys=["r read", "a-ns admin alice", "a admin", "b"])
        assert own_key(load_service_keys(cfg)) == "a"
        assert own_key(load_service_keys(AuthConfig(api_keys=["r read"]))) == "r"
        assert own_key([]) is None


class TestMethodRoles:
    def test_every_rpc_of_every_service_proto_has_a_role(self) -> None:
        """METHOD_ROLES classifies exactly the RPCs the four service protos declare."""
        declared = {
            f"/{svc.full_name}/{m.name}"
            for mod in SERVICE_PROTOS
            for svc in mod.DESCRIPTOR.services_by_name.values()
            for m in svc.methods
        }
        assert declared == set(METHOD_ROLES)

    def test_destructive_rpcs_need_admin(self) -> None:
        """Deletes, resets, graph commits, rollbacks and config changes need an admin key."""
        admin = {m.rsplit("/", 1)[1] for m, r in METHOD_ROLES.items() if r is Role.ADMIN}
        assert {
            "ResetSystem", "DeleteEpisode", "CommitGraph", "RollbackPruning", "UpdateConfig",
            "PurgeTTL",
        } <= admin  # fmt: skip


class TestLoopback:
    def test_loopback_hosts(self) -> None:
        """Loopback addresses and localhost are loopback; wildcards and others are not."""
        assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
        assert not any(map(is_loopback, ["0.0.0.0", "::", "", "10.0.0.5", "vault.internal"]))


def _echo_principal(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    p = current_principal()
    names = "*" if p.namespaces is None else ",".join(sorted(p.namespaces))
    return f"{p.role.label} {names} {p.key_digest}".encode()


@dataclass
class EchoServer:
    port: int
    stop: threading.Event


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """A grpc.aio server with the key interceptor whose GetStats answers the caller's principal."""
    ready, stop = threading.Event(), threading.Event()
    box: list[int] = []

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "tori.episodic.v1.EpisodicVault",
            {"GetStats": grpc.unary_unary_rpc_method_handler(_echo_principal)},
        )
        server = grpc.aio.server(
            interceptors=[
                ApiKeyInterceptor(load_service_keys(AuthConfig(api_keys=["rk read ns1"])))
            ]
        )
        server.add_generic_rpc_handlers((handler,))
        box.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await server.stop(0)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield EchoServer(box[0], stop)
    stop.set()
    thread.join(10)


class TestPrincipal:
    def test_the_servicer_sees_the_callers_role_namespaces_and_digest(
        self, echo_server: EchoServer
    ) -> None:
        """current_principal() inside a call is the key's role, namespaces and digest."""
        with grpc.insecure_channel(f"127.0.0.1:{echo_server.port}") as ch:
            call = ch.unary_unary("/tori.episodic.v1.EpisodicVault/GetStats")
            got = call(b"", metadata=(("authorization", "Bearer rk"),))
        assert got.decode() == f"read ns1 {key_digest('rk')}"

    def test_outside_a_call_or_with_auth_off_the_principal_is_local_admin(self) -> None:
        """With no interceptor the principal is the all-powerful local one."""
        p = current_principal()
        assert p.role is Role.ADMIN and p.namespaces is None and p.may_use("any")


# ---- enforcement on the four real services -------------------------------------------------------


@dataclass
class Fleet:
    vault: episodic_pb2_grpc.EpisodicVaultStub
    sched: sleep_pb2_grpc.SleepSchedulerStub
    pruner: pruner_pb2_grpc.SparsePrunerStub
    learner: koopman_pb2_grpc.KoopmanLearnerStub


def md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
def fleet(make_settings: SettingsFactory) -> Iterator[Fleet]:
    """The four services in-process with an admin, a write and a read key."""
    settings = make_settings(
        auth={"api_keys": [f"{ADMIN} admin", f"{WRITER} write", f"{READER} read"]},
        vault={"backend": "memory", "embedding_dim": 8},
        koopman_learner={"follow_vault": False},
    )
    servers = [
        ServerThread(name, key, factory, settings).start()
        for name, key, factory in (
            ("episodic-vault", "episodic_vault", VaultService),
            ("sleep-scheduler", "sleep_scheduler", SleepSchedulerService),
            ("sparse-pruner", "sparse_pruner", SparsePrunerService),
            ("koopman-learner", "koopman_learner", KoopmanLearnerService),
        )
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.running.grpc_port}") for s in servers]
    try:
        yield Fleet(
            episodic_pb2_grpc.EpisodicVaultStub(channels[0]),
            sleep_pb2_grpc.SleepSchedulerStub(channels[1]),
            pruner_pb2_grpc.SparsePrunerStub(channels[2]),
            koopman_pb2_grpc.KoopmanLearnerStub(channels[3]),
        )
    finally:
        for ch in channels:
            ch.close()
        for s in reversed(servers):
            s.stop()


def refused(call: object, request: object, key: str | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, metadata=md(key) if key else ())  # type: ignore[operator]
    return err.value


def graph_chunks() -> Iterator[sleep_pb2.GraphChunk]:
    yield sleep_pb2.GraphChunk(
        header=sleep_pb2.GraphHeader(base_version=0, author="test"),
        concept_ids=["concept:a", "concept:b"],
        biases=[0.0, 0.0],
    )
    yield sleep_pb2.GraphChunk(edge_i=[0], edge_j=[1], edge_w=[0.5])


class TestRoles:
    def test_keyless_destructive_calls_are_unauthenticated_and_change_nothing(
        self, fleet: Fleet
    ) -> None:
        """Without a key, DeleteEpisode, PurgeTTL, CommitGraph, RollbackPruning, ResetSystem and
        each UpdateConfig are UNAUTHENTICATED and the data and config stay as they were."""
        a = md(ADMIN)
        fleet.vault.PutEpisode(episodic_pb2.PutEpisodeRequest(episode=good_episode(1)), metadata=a)
        versions = len(
            fleet.sched.ListGraphVersions(sleep_pb2.ListGraphVersionsRequest(), metadata=a).versions
        )
        sched_cfg = fleet.sched.GetConfig(sleep_pb2.GetConfigRequest(), metadata=a)
        pruner_cfg = fleet.pruner.GetConfig(pruner_pb2.GetConfigRequest(), metadata=a)
        learner_cfg = fleet.learner.GetConfig(koopman_pb2.GetConfigRequest(), metadata=a)
        status = fleet.learner.GetProcessingStatus(
            koopman_pb2.GetProcessingStatusRequest(), metadata=a
        )

        calls = [
            (fleet.vault.DeleteEpisode, episodic_pb2.DeleteEpisodeRequest(id="ep-1")),
            (fleet.vault.PurgeTTL, episodic_pb2.PurgeTTLRequest(ttl_hours=1e-9, keep_ref_count=99)),
            (fleet.sched.UpdateConfig, sleep_pb2.UpdateConfigRequest(
                config=sleep_pb2.SchedulerConfig(t0=3.5), fields=["t0"])),
            (fleet.pruner.UpdateConfig, pruner_pb2.UpdateConfigRequest(tau=0.5)),
            (fleet.pruner.RollbackPruning, pruner_pb2.RollbackPruningRequest()),
            (fleet.learner.UpdateConfig, koopman_pb2.UpdateConfigRequest(rank=7)),
            (fleet.learner.ResetSystem, koopman_pb2.ResetSystemRequest(rescan_vault=True)),
        ]  # fmt: skip
        for call, request in calls:
            err = refused(call, request, None)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, call
            assert "no API key was sent" in (err.details() or "")
        err = refused(fleet.sched.CommitGraph, graph_chunks(), None)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

        assert (
            fleet.vault.GetEpisode(episodic_pb2.GetEpisodeRequest(id="ep-1"), metadata=a).episode.id
            == "ep-1"
        )
        assert fleet.vault.GetStats(episodic_pb2.GetStatsRequest(), metadata=a).episode_count == 1
        assert (
            len(
                fleet.sched.ListGraphVersions(
                    sleep_pb2.ListGraphVersionsRequest(), metadata=a
                ).versions
            )
            == versions
        )
        assert fleet.sched.GetConfig(sleep_pb2.GetConfigRequest(), metadata=a) == sched_cfg
        assert fleet.pruner.GetConfig(pruner_pb2.GetConfigRequest(), metadata=a) == pruner_cfg
        assert fleet.learner.GetConfig(koopman_pb2.GetConfigRequest(), metadata=a) == learner_cfg
        after = fleet.learner.GetProcessingStatus(
            koopman_pb2.GetProcessingStatusRequest(), metadata=a
        )
        assert (
            after.cursor == status.cursor
            and after.snapshots_processed == status.snapshots_processed
        )
        # The same commit with the admin key goes through: the refusal was the key's doing.
        fleet.sched.CommitGraph(graph_chunks(), metadata=a)
        assert (
            len(
                fleet.sched.ListGraphVersions(
                    sleep_pb2.ListGraphVersionsRequest(), metadata=a
                ).versions
            )
            == versions + 1
        )

    def test_a_read_key_may_read_but_not_delete(self, fleet: Fleet) -> None:
        """A read key gets PERMISSION_DENIED naming DeleteEpisode and admin; the episode stays."""
        fleet.vault.PutEpisode(
            episodic_pb2.PutEpisodeRequest(episode=good_episode(1)), metadata=md(ADMIN)
        )
        got = fleet.vault.GetEpisode(episodic_pb2.GetEpisodeRequest(id="ep-1"), metadata=md(READER))
        assert got.episode.id == "ep-1"
        for key in (READER, WRITER):
            err = refused(
                fleet.vault.DeleteEpisode, episodic_pb2.DeleteEpisodeRequest(id="ep-1"), key
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            details = err.details() or ""
            assert "DeleteEpisode needs a key of role admin" in details and key not in details
        assert (
            fleet.vault.GetEpisode(
                episodic_pb2.GetEpisodeRequest(id="ep-1"), metadata=md(READER)
            ).episode.id
            == "ep-1"
        )

    def test_a_write_key_may_put_and_a_read_key_may_not(self, fleet: Fleet) -> None:
        """PutEpisode takes a write key and refuses a read key with PERMISSION_DENIED."""
        req = episodic_pb2.PutEpisodeRequest(episode=good_episode(2))
        err = refused(fleet.vault.PutEpisode, req, READER)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "role write" in (
            err.details() or ""
        )
        assert (
            fleet.vault.GetStats(episodic_pb2.GetStatsRequest(), metadata=md(READER)).episode_count
            == 0
        )
        fleet.vault.PutEpisode(req, metadata=md(WRITER))
        assert (
            fleet.vault.GetStats(episodic_pb2.GetStatsRequest(), metadata=md(READER)).episode_count
            == 1
        )

    def test_a_write_key_cannot_commit_a_graph(self, fleet: Fleet) -> None:
        """CommitGraph needs admin: a write key is PERMISSION_DENIED and no version is added."""
        before = fleet.sched.ListGraphVersions(
            sleep_pb2.ListGraphVersionsRequest(), metadata=md(READER)
        )
        err = refused(fleet.sched.CommitGraph, graph_chunks(), WRITER)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "CommitGraph" in (
            err.details() or ""
        )
        after = fleet.sched.ListGraphVersions(
            sleep_pb2.ListGraphVersionsRequest(), metadata=md(READER)
        )
        assert after == before


class TestStartRefusal:
    def test_beyond_loopback_without_keys_the_server_refuses_to_start(
        self, make_settings: SettingsFactory
    ) -> None:
        """A service on 0.0.0.0 with no key is a StartupError naming the host key and the fix."""
        settings = make_settings(services={"sleep_scheduler": {"host": "0.0.0.0"}})
        with pytest.raises(StartupError) as err:
            ServerThread("sleep", "sleep_scheduler", SleepSchedulerService, settings).start()
        text = str(err.value)
        assert "services.sleep_scheduler.host" in text
        assert "TORI_API_KEYS_FILE" in text and "127.0.0.1" in text

    def test_the_container_config_without_keys_exits_non_zero_with_the_message(
        self, tmp_path: Path
    ) -> None:
        """The vault as a process with the container configuration and an empty key file exits
        2, saying which host and how to fix it."""
        empty = tmp_path / "api_keys"
        empty.write_text("# no keys yet\n")
        env = service_environ(tmp_path / "var", TORI_ENV="container", TORI_API_KEYS_FILE=str(empty))
        proc = subprocess.run(
            [sys.executable, "-m", "mcp_services.episodic_vault.server"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "services.episodic_vault.host is '0.0.0.0'" in proc.stderr
        assert "TORI_API_KEYS_FILE" in proc.stderr


class TestRotation:
    def test_a_service_takes_a_new_key_file_only_at_restart(self, tmp_path: Path) -> None:
        """Rewriting the key file changes nothing in a running service, even across a config
        reload; after a restart the new key is accepted and the old one refused."""
        keys = tmp_path / "api_keys"
        keys.write_text("old-key-0123456789 admin\n")
        req = sleep_pb2.GetConfigRequest()

        def code(port: int, key: str) -> grpc.StatusCode:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    sleep_pb2_grpc.SleepSchedulerStub(ch).GetConfig(req, metadata=md(key))
                except grpc.RpcError as exc:
                    return exc.code()
            return grpc.StatusCode.OK

        env = {"TORI_API_KEYS_FILE": str(keys)}
        with served(
            tmp_path, "sleep", "sleep_scheduler", SleepSchedulerService, environ=env
        ) as svc:
            port = svc.server.running.grpc_port
            assert code(port, "old-key-0123456789") == grpc.StatusCode.OK
            write_atomically(keys, "new-key-0123456789 admin\n")
            svc.edit("sleep_scheduler", {"t0": 2.5})
            assert wait_for(lambda: svc.reloads("applied") >= 1)
            assert code(port, "old-key-0123456789") == grpc.StatusCode.OK
            assert code(port, "new-key-0123456789") == grpc.StatusCode.UNAUTHENTICATED
            settings = svc.reloader.settings
        with ServerThread("sleep", "sleep_scheduler", SleepSchedulerService, settings) as srv:
            port = srv.running.grpc_port
            assert code(port, "new-key-0123456789") == grpc.StatusCode.OK
            assert code(port, "old-key-0123456789") == grpc.StatusCode.UNAUTHENTICATED


class TestMakeTargets:
    def test_init_directories_writes_one_admin_key_and_keeps_it(self, tmp_path: Path) -> None:
        """`make init-directories` puts a fresh admin key in an empty secrets/api_keys and keeps
        it on the next run; `make secrets-up` adds a gateway key and leaves the service key."""
        makefile = Path(__file__).resolve().parents[2] / "Makefile"

        def make(target: str) -> None:
            subprocess.run(
                ["make", "-s", "-f", str(makefile), "-C", str(tmp_path), target,
                 f"PYTHON={sys.executable}"],
                check=True, capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        make("init-directories")
        path = tmp_path / "secrets" / "api_keys"
        (key,) = load_service_keys(AuthConfig(api_keys_file=str(path)))
        assert key.role is Role.ADMIN and key.namespaces is None and len(key.key) >= 40
        assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
        make("init-directories")
        make("secrets-up")
        assert [k.key for k in load_service_keys(AuthConfig(api_keys_file=str(path)))] == [key.key]
        gateway = (tmp_path / "secrets" / "gateway_api_keys").read_text().split()
        assert len(gateway) == 2 and gateway[1] == "default" and gateway[0] != key.key
