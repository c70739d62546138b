"""No secret reaches a log: the fleet's five processes started and reloaded with secrets."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml
from psycopg import sql

from mcp_services.common.config import PROJECT_ROOT
from mcp_services.fleet.redis_server import redis_argv, wait_ready
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from tests.common.reloading import wait_for, write_atomically
from tests.conftest import free_port, service_environ
from tests.fleet.test_fleet import fleet

pytestmark = pytest.mark.fleet

PG = "127.0.0.1:5432/postgres"
SERVICES = ("episodic-vault", "sleep-scheduler", "sparse-pruner", "koopman-learner")
# Every secret the test hands the fleet; none may appear in any log or in `up`'s output.
START = {
    "pg": "pg-sekrit-start",
    "redis": "redis-sekrit-start",
    "service_key": "svc-sekrit-start-0123456789",
    "gateway_key": "gw-sekrit-start-0123456789",
}
RELOAD = {
    "pg": "pg-sekrit-reload",
    "redis": "redis-sekrit-reload",
    "vault_redis": "vredis-sekrit-reload",
    "service_key": "svc-sekrit-reload-0123456789",
    "gateway_key": "gw-sekrit-reload-0123456789",
}
WRONG_KEY = "wrong-sekrit-0123456789"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis that requires the START password, so the URL carrying it is really used."""
    port = free_port()
    argv = [*redis_argv(port, tmp_path / "redis"), "--requirepass", START["redis"]]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_ready(f"redis://:{START['redis']}@127.0.0.1:{port}/0", 15)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for the vault, dropped afterwards (trust auth ignores the
    password the DSN carries)."""
    schema = f"tori_secrets_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(f"postgresql://postgres@{PG}", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _mcp(url: str, key: str, body: dict[str, object]) -> tuple[int, str]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class TestSecretsNeverLogged:
    @pytest.mark.timeout(600)
    def test_start_calls_and_a_reload_with_secrets_leave_none_in_any_log(
        self, tmp_path: Path, private_redis: int, pg_schema: str
    ) -> None:
        """The four services and the gateway, started at log level info with a PostgreSQL DSN
        with a password, service and gateway keys and a Redis URL with a password, called with
        right and wrong keys, then reloaded with new values of each: every service logs the
        restart-needed changes, the gateway its reload, and no secret is in any log file."""
        config_dir = tmp_path / "config"
        shutil.copytree(PROJECT_ROOT / "config", config_dir)
        keys = tmp_path / "api_keys"
        keys.write_text(f"{START['service_key']} admin\n")
        gw_keys = tmp_path / "gateway_api_keys"
        gw_keys.write_text(f"{START['gateway_key']} default\n")
        env = service_environ(
            tmp_path / "var",
            TORI_CONFIG_DIR=str(config_dir),
            TORI_CONFIG_POLL_S="0.1",
            LOG_LEVEL="info",
            LOG_FORMAT="json",
            REDIS_URL=f"redis://:{START['redis']}@127.0.0.1:{private_redis}/0",
            TORI_API_KEYS_FILE=str(keys),
            GATEWAY_API_KEYS_FILE=str(gw_keys),
            GATEWAY_AUTH_REQUIRED="true",
            VAULT_BACKEND="postgres",
            VAULT_POSTGRES_DSN=f"postgresql://postgres:{START['pg']}@{PG}",
            VAULT_POSTGRES_SCHEMA=pg_schema,
        )
        up = fleet("up", env)
        try:
            assert up.returncode == 0, up.stderr + up.stdout
            self._use(env)
            overlay = config_dir / "test.yaml"
            tree = yaml.safe_load(overlay.read_text()) or {}
            tree.setdefault("auth", {})["api_keys"] = [f"{RELOAD['service_key']} admin"]
            tree["redis"] = {"url": f"redis://:{RELOAD['redis']}@127.0.0.1:{private_redis}/0"}
            tree["vault"] = {
                "postgres": {"dsn": f"postgresql://postgres:{RELOAD['pg']}@{PG}"},
                "redis": {"password": RELOAD["vault_redis"]},
            }
            write_atomically(overlay, yaml.safe_dump(tree))
            # The gateway reloads its key file (gateway/live.py), the services their config files.
            write_atomically(gw_keys, f"{RELOAD['gateway_key']} default\n")
            log_dir = Path(env["TORI_VAR_DIR"]) / "log"

            def reloaded() -> bool:
                logs = {p.stem: p.read_text() for p in log_dir.glob("*.log")}
                return all("config_change_needs_restart" in logs.get(s, "") for s in SERVICES) and (
                    "gateway_reloaded" in logs.get("mcp-gateway", "")
                )

            assert wait_for(reloaded, 60), "not every process logged the reload"
        finally:
            down = fleet("down", env)
        texts = {p.name: p.read_text() for p in (Path(env["TORI_VAR_DIR"]) / "log").glob("*.log")}
        texts["fleet up"] = up.stdout + up.stderr
        texts["fleet down"] = down.stdout + down.stderr
        assert {f"{s}.log" for s in (*SERVICES, "mcp-gateway")} <= set(texts)
        for secret in (*START.values(), *RELOAD.values(), WRONG_KEY):
            leaked = [name for name, text in texts.items() if secret in text]
            assert not leaked, f"{secret} is in {leaked}"
        vault = [json.loads(x) for x in texts["episodic-vault.log"].splitlines() if x[:1] == "{"]
        dsn = next(e for e in vault if e.get("key") == "vault.postgres.dsn")
        assert dsn["event"] == "config_change_needs_restart"
        assert dsn["running"] == f"postgresql://postgres:***@{PG}"
        assert next(e for e in vault if e.get("key") == "auth.api_keys")["file"] == "***"

    def _use(self, env: dict[str, str]) -> None:
        """Calls with the right, a wrong and no key, to the vault and the gateway."""
        from mcp_services.common.clients import ClientFactory
        from mcp_services.common.config import load_config

        channel = ClientFactory.of(load_config(environ=env)).channel("episodic-vault")
        put = channel.unary_unary(
            "/tori.episodic.v1.EpisodicVault/PutEpisode",
            request_serializer=pb.PutEpisodeRequest.SerializeToString,
            response_deserializer=pb.PutEpisodeResponse.FromString,
        )
        ep = pb.Episode(
            id="secret-test-1",
            activation=pb.ConceptActivation(concept_ids=["concept:a"], strengths=[1.0]),
        )
        assert put(pb.PutEpisodeRequest(episode=ep)).result.id == "secret-test-1"
        with pytest.raises(grpc.RpcError) as err:
            put(pb.PutEpisodeRequest(episode=ep), metadata=(("x-api-key", WRONG_KEY),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        url = f"http://127.0.0.1:{env['GATEWAY_PORT']}/mcp"
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert _mcp(url, START["gateway_key"], body)[0] == 200
        assert _mcp(url, WRONG_KEY, body)[0] == 401
