"""Config reload: a key is applied only where the service declares and applies it; bad files are
refused; everything else the service reads is reported "restart needed"; secrets never reach the
log. (Each tuning service's own keys are walked in tests/<service>/test_reload_<service>.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from mcp_services.common.config import PROJECT_ROOT, ConfigError, load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.health import wait_serving
from mcp_services.common.reload import (
    Change,
    ConfigReloader,
    diff_settings,
    section_changes,
    sections_of,
    with_keys,
)
from mcp_services.common.secrets_mask import mask_secret, mask_text
from mcp_services.common.server import Context
from tests.common.reloading import Reloading, served, wait_for, write_atomically
from tests.conftest import service_environ


class RecordingService:
    """Declares sleep_scheduler.t0 and .eta live and records every change it is handed."""

    service_names: tuple[str, ...] = ()
    # A declared key this service "forgets" to apply (the bug the read-back catches).
    forget: tuple[str, ...] = ()

    def __init__(self, ctx: Context) -> None:
        self.t0 = ctx.settings.sleep_scheduler.t0
        self.eta = ctx.settings.sleep_scheduler.eta
        self.applied: list[list[Change]] = []

    def register(self, server: grpc.aio.Server) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def live_settings(self) -> dict[str, Callable[[], object]]:
        return {"sleep_scheduler.t0": lambda: self.t0, "sleep_scheduler.eta": lambda: self.eta}

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        if settings.sleep_scheduler.eta > 0.5:
            raise ValueError("sleep_scheduler.eta: this service refuses eta > 0.5")
        new = section_changes(changes, "sleep_scheduler")
        for name in ("t0", "eta"):
            if name in new and name not in self.forget:
                setattr(self, name, new[name])
        self.applied.append(list(changes))


class ForgetfulService(RecordingService):
    forget = ("eta",)


class Declares:
    """Declares the given readers live and applies nothing (for declaration checks)."""

    def __init__(self, readers: dict[str, Callable[[], object]]) -> None:
        self._readers = readers

    def live_settings(self) -> dict[str, Callable[[], object]]:
        return self._readers

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        return None


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Reloading]:
    with served(tmp_path, "recording", "sleep_scheduler", RecordingService) as svc:
        yield svc


class TestDiff:
    def test_declared_keys_are_live_and_others_are_not(self) -> None:
        """Only the keys a service declares are marked live, whatever their section."""
        base = load_config("test", environ={})
        new = base.model_copy(
            update={
                "sleep_scheduler": base.sleep_scheduler.model_copy(
                    update={"t0": 3.0, "lease_ttl_s": 9.0}
                ),
                "grpc": base.grpc.model_copy(update={"shutdown_grace_s": 1.5}),
            }
        )
        changes = {c.key: c for c in diff_settings(base, new, {"sleep_scheduler.t0"})}
        assert set(changes) == {
            "sleep_scheduler.t0",
            "sleep_scheduler.lease_ttl_s",
            "grpc.shutdown_grace_s",
        }
        assert changes["sleep_scheduler.t0"].live and changes["sleep_scheduler.t0"].new == 3.0
        assert not changes["sleep_scheduler.lease_ttl_s"].live
        assert not changes["grpc.shutdown_grace_s"].live
        assert section_changes(list(changes.values()), "sleep_scheduler") == {
            "t0": 3.0,
            "lease_ttl_s": 9.0,
        }

    def test_with_keys_takes_only_the_named_keys_and_validates_the_mix(self) -> None:
        """Merging one key keeps the rest running; a mix the schema refuses is a ConfigError."""
        base = load_config("test", environ={})
        new = load_config(
            "test", environ={}, overrides={"sleep_scheduler": {"t0": 0.2, "t_min": 0.1}}
        )
        both = with_keys(base, new, ["sleep_scheduler.t0", "sleep_scheduler.t_min"])
        assert (both.sleep_scheduler.t0, both.sleep_scheduler.t_min) == (0.2, 0.1)
        assert both.grpc == base.grpc
        # t0 alone would run below the t_min still in force (0.3).
        with pytest.raises(ConfigError, match="t_min"):
            with_keys(base, new, ["sleep_scheduler.t0"])

    def test_each_service_reads_the_shared_sections_and_its_own(self) -> None:
        """The scheduler never reads the vault's section; an unknown service reads everything."""
        sched = sections_of("sleep_scheduler")
        assert sched is not None
        assert {"sleep_scheduler", "redis", "auth", "services"} <= sched
        assert not {"vault", "sparse_pruner", "koopman_learner", "gateway", "fleet"} & sched
        assert sections_of("something-else") is None


class TestMasking:
    def test_secret_keys_are_masked_whole(self) -> None:
        """Passwords and API keys show as *** (empty stays empty, so a log says whether set)."""
        assert mask_secret("redis.password", "hunter2") == "***"
        assert mask_secret("vault.redis.password", "") == ""
        assert mask_secret("auth.api_keys", ["k1", "k2"]) == "***"
        assert mask_secret("auth.api_keys", []) == []
        assert mask_secret("gateway.api_keys", ["k1 tenant"]) == "***"
        assert mask_secret("gateway.stdio_api_key", "k1") == "***"
        assert mask_secret("sleep_scheduler.t0", 2.0) == 2.0

    @pytest.mark.parametrize(
        ("given", "shown"),
        [
            ("postgresql://tori:s3cret@db:5432/tori", "postgresql://tori:***@db:5432/tori"),
            ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
            ("rediss://default:s3cret@cache:6380", "rediss://default:***@cache:6380"),
            (
                "host=db user=tori password=s3cret dbname=tori",
                "host=db user=tori password=*** dbname=tori",
            ),
            ("host=db password='s3 cret' port=5432", "host=db password=*** port=5432"),
            (
                "postgresql://db/tori?user=tori&password=s3cret",
                "postgresql://db/tori?user=tori&password=***",
            ),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "postgresql://postgres@127.0.0.1:5432/postgres",
                "postgresql://postgres@127.0.0.1:5432/postgres",
            ),
        ],
    )
    def test_passwords_are_cut_out_of_urls_and_dsns(self, given: str, shown: str) -> None:
        """A DSN or URL keeps its host and user and loses only its password."""
        assert mask_text(given) == shown
        assert mask_secret("vault.postgres.dsn", given) == shown


class TestDeclaration:
    def _reloader(self, service: object) -> ConfigReloader:
        settings = load_config("test", environ={})
        return ConfigReloader(
            settings,
            lambda: settings,
            [],
            service,
            CollectorRegistry(),
            sections=sections_of("sleep_scheduler"),
        )

    def _service(self, readers: dict[str, Callable[[], object]]) -> Declares:
        return Declares(readers)

    def test_a_declared_key_the_schema_lacks_fails_at_start(self) -> None:
        """A misspelt declaration is an error at start, not a key that silently never applies."""
        with pytest.raises(ValueError, match=r"sleep_scheduler\.t00.*not a configuration key"):
            self._reloader(self._service({"sleep_scheduler.t00": lambda: 2.0}))

    def test_a_declared_key_of_a_section_the_service_never_reads_fails_at_start(self) -> None:
        """The scheduler cannot declare a vault key live."""
        with pytest.raises(ValueError, match=r"vault\.ttl_hours.*never reads"):
            self._reloader(self._service({"vault.ttl_hours": lambda: 48.0}))

    def test_a_reader_that_reads_the_wrong_value_fails_at_start(self) -> None:
        """A reader must read the value in force, which at start is the configured one."""
        with pytest.raises(ValueError, match=r"sleep_scheduler\.t0.*reads 7\.0"):
            self._reloader(self._service({"sleep_scheduler.t0": lambda: 7.0}))


class TestLiveReload:
    def test_file_change_applies_a_declared_key(self, recording: Reloading) -> None:
        """Editing t0 reaches the service, is recorded as running, and is counted applied."""
        svc: RecordingService = recording.service
        old_t0 = svc.t0
        recording.edit("sleep_scheduler", {"t0": old_t0 + 1.25})
        assert wait_for(lambda: bool(svc.applied)), "the change was not applied"
        (change,) = svc.applied[0]
        assert (change.key, change.old, change.new) == (
            "sleep_scheduler.t0",
            old_t0,
            old_t0 + 1.25,
        )
        assert svc.t0 == old_t0 + 1.25
        assert wait_for(lambda: recording.reloads("applied") == 1)
        assert recording.reloader.settings.sleep_scheduler.t0 == old_t0 + 1.25
        assert recording.reloads("restart_needed") == 0

    def test_invalid_file_is_refused_and_old_config_stays(self, recording: Reloading) -> None:
        """A value the schema rejects changes nothing; fixing the file applies the next one."""
        svc: RecordingService = recording.service
        old_t0 = svc.t0
        recording.edit("sleep_scheduler", {"t0": -1})
        assert wait_for(lambda: recording.reloads("refused") == 1)
        assert svc.applied == []
        assert recording.reloader.settings.sleep_scheduler.t0 == old_t0
        recording.edit("sleep_scheduler", {"t0": old_t0 + 0.5})
        assert wait_for(lambda: bool(svc.applied))
        assert svc.t0 == old_t0 + 0.5

    def test_value_the_service_refuses_keeps_old_config(self, recording: Reloading) -> None:
        """apply_settings raising refuses the reload: nothing recorded, nothing counted applied."""
        recording.edit("sleep_scheduler", {"eta": 0.9})
        assert wait_for(lambda: recording.reloads("refused") == 1)
        assert recording.reloader.settings.sleep_scheduler.eta != 0.9
        assert recording.service.applied == []
        assert recording.reloads("applied") == 0

    def test_undeclared_keys_the_service_reads_need_a_restart(self, recording: Reloading) -> None:
        """A tuning key the service does not declare, like a gRPC option, is "restart needed"."""
        before = recording.reloader.settings
        with capture_logs() as logs:
            recording.edit("sleep_scheduler", {"t_min": 0.25})
            recording.edit("grpc", {"shutdown_grace_s": before.grpc.shutdown_grace_s + 3})
            assert wait_for(lambda: recording.reloads("restart_needed") >= 1)
            assert wait_for(
                lambda: (
                    {e.get("key") for e in logs}
                    >= {"sleep_scheduler.t_min", "grpc.shutdown_grace_s"}
                )
            )
        warned = {e["key"]: e for e in logs if e["event"] == "config_change_needs_restart"}
        assert (
            warned["sleep_scheduler.t_min"]["running"],
            warned["sleep_scheduler.t_min"]["file"],
        ) == (
            before.sleep_scheduler.t_min,
            0.25,
        )
        assert recording.reloader.settings.sleep_scheduler.t_min == before.sleep_scheduler.t_min
        assert recording.reloader.settings.grpc == before.grpc
        assert recording.service.applied == []
        assert recording.reloads("applied") == 0

    def test_keys_of_sections_the_service_never_reads_are_not_used(
        self, recording: Reloading
    ) -> None:
        """A vault key edited under the scheduler: neither applied nor a restart, counted unchanged."""
        recording.edit("vault", {"ttl_hours": 12})
        assert wait_for(lambda: recording.reloads("unchanged") == 1)
        assert recording.reloads("restart_needed") == 0
        assert recording.reloads("applied") == 0
        assert recording.service.applied == []

    def test_a_declared_key_the_service_fails_to_apply_is_not_counted_applied(
        self, tmp_path: Path
    ) -> None:
        """The read-back catches a service that declares eta but drops it: an error, and
        "restart needed" instead of "applied"."""
        with served(tmp_path, "forgetful", "sleep_scheduler", ForgetfulService) as svc:
            old_eta = svc.service.eta
            with capture_logs() as logs:
                svc.edit("sleep_scheduler", {"eta": 0.02})
                assert wait_for(lambda: svc.reloads("restart_needed") == 1)
            assert svc.service.applied, "the service was not asked to apply eta"
            (lost,) = [e for e in logs if e["event"] == "config_change_not_applied"]
            assert (lost["key"], lost["running"], lost["file"]) == (
                "sleep_scheduler.eta",
                old_eta,
                0.02,
            )
            assert svc.reloads("applied") == 0
            assert svc.reloader.settings.sleep_scheduler.eta == old_eta

    def test_a_refused_file_does_not_log_the_password_it_carries(
        self, recording: Reloading
    ) -> None:
        """The validation error quotes the bad value with its password cut out."""
        with capture_logs() as logs:
            recording.edit("redis", {"url": "http://:hunter2@cache:6379"})
            assert wait_for(lambda: recording.reloads("refused") == 1)
        (refused,) = [e for e in logs if e["event"] == "config_reload_refused"]
        assert "redis.url" in refused["error"] and "http://:***@cache:6379" in refused["error"]
        assert "hunter2" not in repr(logs)


class TestSecretsInTheLog:
    def test_reload_log_of_a_real_process_names_keys_but_never_secrets(
        self, tmp_path: Path
    ) -> None:
        """A SleepScheduler process at log level info: one reload applies t0, reports the
        changed Redis password and API keys as restart needed with their values masked, the
        vault's DSN as not used; a refused URL is quoted masked. No secret is in its log."""
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        for name in ("base.yaml", "test.yaml"):
            (config_dir / name).write_text((PROJECT_ROOT / "config" / name).read_text())
        env = service_environ(
            tmp_path / "var",
            TORI_CONFIG_DIR=str(config_dir),
            TORI_CONFIG_POLL_S="0.1",
            LOG_LEVEL="info",
            LOG_FORMAT="json",
        )
        secrets = ("redis-sekrit", "key-sekrit", "pg-sekrit", "url-sekrit")
        log_path = tmp_path / "scheduler.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mcp_services.sleep_scheduler.server"],
                env=env,
                stdout=out,
                stderr=out,
                cwd=PROJECT_ROOT,
            )
        try:
            target = f"127.0.0.1:{env['SLEEP_GRPC_PORT']}"
            assert wait_serving(target, 60, lambda: proc.poll() is None), log_path.read_text()
            overlay = config_dir / "test.yaml"
            tree = yaml.safe_load(overlay.read_text())
            tree["sleep_scheduler"] = {"t0": 2.5}
            tree["redis"] = {"password": "redis-sekrit"}
            tree["auth"] = {"api_keys": ["key-sekrit"]}
            tree["vault"] = {"postgres": {"dsn": "postgresql://tori:pg-sekrit@db:5432/tori"}}
            write_atomically(overlay, yaml.safe_dump(tree))
            assert wait_for(lambda: "config_change_needs_restart" in log_path.read_text(), 20)
            tree["redis"]["url"] = "http://:url-sekrit@cache:6379"
            write_atomically(overlay, yaml.safe_dump(tree))
            assert wait_for(lambda: "config_reload_refused" in log_path.read_text(), 20)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        text = log_path.read_text()
        for secret in secrets:
            assert secret not in text, f"{secret} leaked into the log"
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        by_key = {(e["event"], e.get("key")): e for e in lines}
        assert {e["key"] for e in lines if e["event"] == "config_changed"} == {"sleep_scheduler.t0"}
        changed = by_key["config_changed", "sleep_scheduler.t0"]
        assert (changed["old"], changed["new"]) == (2.0, 2.5)
        password = by_key["config_change_needs_restart", "redis.password"]
        assert (password["running"], password["file"]) == ("", "***")
        keys = by_key["config_change_needs_restart", "auth.api_keys"]
        assert (keys["running"], keys["file"]) == ([], "***")
        assert ("config_change_not_used", "vault.postgres.dsn") in by_key
        assert ("config_change_needs_restart", "vault.postgres.dsn") not in by_key
        (refused,) = [e for e in lines if e["event"] == "config_reload_refused"]
        assert "http://:***@cache:6379" in refused["error"]
