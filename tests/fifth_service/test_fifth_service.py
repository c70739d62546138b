"""A fifth service needs only its domain and servicer: the runner gives it the rest.

tests/fifth_service is a service beyond the built-in four (a word count and a tally job) that
touches no file of common/: it registers its config section, its endpoint and its RPC roles from
its own modules, and runs as ``python -m tests.fifth_service.server`` through ``run()`` as the
fleet's services do, with auth on (service keys from a file) and a watched config directory.
A real client then checks health, reflection, metrics, auth, the job registry, config reload and
the error mapping.

This test imports none of the service's registering modules (settings, rpc, server): those
registrations belong to the service's own process, not to the suite's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pool, json_format, struct_pb2, wrappers_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from mcp_services.common import metric_names as names
from mcp_services.common.auth import METHOD_ROLES, Role, register_roles
from mcp_services.common.config import PROJECT_ROOT, load_config
from mcp_services.common.config_schema import register_endpoint
from mcp_services.common.health import check, wait_serving
from tests.common.reloading import wait_for, write_atomically
from tests.conftest import free_ports
from tests.fifth_service.domain import CHUNK, summary, words

SERVICE = "tori.test.v1.Words"
ADMIN_KEY = "fifth-admin-key"
READ_KEY = "fifth-read-key"
START_S = 60.0  # a guard against a hang (a cold interpreter imports the whole fleet's settings)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    channel: grpc.Channel
    target: str
    metrics_url: str
    overlay: Path
    log: Path

    def call(self, method: str, text: str, key: str | None = ADMIN_KEY) -> object:
        reply = struct_pb2.Struct if method != "StartTally" else wrappers_pb2.StringValue
        rpc = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=reply.FromString,
        )
        metadata = [("authorization", f"Bearer {key}")] if key else None
        return rpc(wrappers_pb2.StringValue(value=text), metadata=metadata, timeout=10)

    def tally(self, job_id: str) -> dict[str, Any]:
        reply = self.call("GetTally", job_id)
        assert isinstance(reply, struct_pb2.Struct)
        return json_format.MessageToDict(reply)

    def edit(self, values: dict[str, object]) -> None:
        tree = yaml.safe_load(self.overlay.read_text()) or {}
        tree.setdefault("words", {}).update(values)
        write_atomically(self.overlay, yaml.safe_dump(tree))

    def samples(self, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            page = resp.read().decode()
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(page)
            for s in family.samples
            if s.name == metric
        }

    def handled(self, method: str, code: str) -> float:
        labels = {
            "grpc_type": "unary",
            "grpc_service": SERVICE,
            "grpc_method": method,
            "grpc_code": code,
        }
        return self.samples(names.GRPC_SERVER_HANDLED).get(tuple(sorted(labels.items())), 0.0)

    def logged(self, *parts: str) -> bool:
        """Whether one line of the service's log holds every one of ``parts``."""
        return any(all(p in line for p in parts) for line in self.log.read_text().splitlines())

    def reloads(self, outcome: str) -> float:
        return self.samples(names.CONFIG_RELOADS)[(("outcome", outcome),)]


@pytest.fixture
def words_service(tmp_path: Path) -> Iterator[Running]:
    """The fifth service in its own process, from a private copy of config/ (the test overlay)."""
    config_dir = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config_dir)
    grpc_port, metrics_port = free_ports(2)
    overlay = config_dir / "test.yaml"
    tree = yaml.safe_load(overlay.read_text()) or {}
    tree.setdefault("services", {})["words"] = {"port": grpc_port, "metrics_port": metrics_port}
    # A slow pace keeps the first tally running while the test calls; max_chars bounds a text.
    tree["words"] = {"pace_s": 0.5, "max_chars": 200_000}
    overlay.write_text(yaml.safe_dump(tree))
    keys = tmp_path / "api_keys"
    keys.write_text(f"# the fleet's key file format\n{ADMIN_KEY} admin\n{READ_KEY} read\n")
    env = {
        **os.environ,
        "TORI_CONFIG_DIR": str(config_dir),
        "TORI_ENV": "test",
        "TORI_VAR_DIR": str(tmp_path / "var"),
        "TORI_CONFIG_POLL_S": "0.1",
        "TORI_API_KEYS_FILE": str(keys),
        "REDIS_URL": "",
    }
    log = tmp_path / "words.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fifth_service.server"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    target = f"127.0.0.1:{grpc_port}"
    try:
        assert wait_serving(target, START_S, alive=lambda: proc.poll() is None), log.read_text()
        with grpc.insecure_channel(target) as channel:
            yield Running(
                proc,
                channel,
                target,
                f"http://127.0.0.1:{metrics_port}/metrics",
                overlay,
                log,
            )
    finally:
        if proc.poll() is None:  # the test stops it with SIGTERM; here only when it failed first
            proc.kill()
            proc.wait()


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.RpcError)
    return call.code(), call.details()


class TestDomain:
    def test_words_and_their_summary(self) -> None:
        ws = words("The cat and THE hat; the cat's hat.")
        assert ws == ["the", "cat", "and", "the", "hat", "the", "cat's", "hat"]
        assert summary(ws, top=2) == {
            "words": 8,
            "mean_length": 3.25,
            "top": [["the", 3], ["hat", 2]],
        }


class TestRegistration:
    def test_a_builtin_services_roles_or_endpoint_cannot_be_registered_again(self) -> None:
        """What a new service registers cannot replace the fleet's: refused, nothing changed."""
        before = dict(METHOD_ROLES)
        with pytest.raises(
            ValueError, match=re.escape("roles of tori.episodic.v1.EpisodicVault are already")
        ):
            register_roles("tori.episodic.v1.EpisodicVault", {"DeleteEpisode": Role.READ})
        assert before == METHOD_ROLES
        with pytest.raises(
            ValueError, match=re.escape("services.episodic_vault is already an endpoint")
        ):
            register_endpoint("episodic_vault")
        assert "words" not in type(load_config("test").services).model_fields


class TestFifthService:
    def test_it_runs_with_everything_the_runner_gives(self, words_service: Running) -> None:
        svc = words_service

        # Health: the process and its service report SERVING.
        assert check(svc.target) == "SERVING"
        assert check(svc.target, SERVICE) == "SERVING"

        # Reflection lists the service and resolves its methods from the descriptor it declared.
        db = ProtoReflectionDescriptorDatabase(svc.channel)
        assert SERVICE in db.get_services()
        described = descriptor_pool.DescriptorPool(db).FindServiceByName(SERVICE)
        assert {m.name: m.output_type.full_name for m in described.methods} == {
            "Count": "google.protobuf.Struct",
            "StartTally": "google.protobuf.StringValue",
            "GetTally": "google.protobuf.Struct",
        }

        # Auth: no key or a wrong one is UNAUTHENTICATED; the roles the service registered hold.
        with pytest.raises(grpc.RpcError) as no_key:
            svc.call("Count", "a b", key=None)
        assert code_of(no_key.value)[0] is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as wrong_key:
            svc.call("Count", "a b", key="not-a-key")
        assert code_of(wrong_key.value)[0] is grpc.StatusCode.UNAUTHENTICATED
        counted = svc.call("Count", "to be or not to be", key=READ_KEY)
        assert isinstance(counted, struct_pb2.Struct)
        assert json_format.MessageToDict(counted)["top"] == [["to", 2], ["be", 2], ["or", 1]]
        with pytest.raises(grpc.RpcError) as too_small:
            svc.call("StartTally", "a b", key=READ_KEY)
        code, details = code_of(too_small.value)
        assert code is grpc.StatusCode.PERMISSION_DENIED and "role write" in details

        # Validation: an InputError is INVALID_ARGUMENT naming the setting.
        with pytest.raises(grpc.RpcError) as too_long:
            svc.call("Count", "x" * 200_001)
        code, details = code_of(too_long.value)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "words.max_chars = 200000" in details

        # An unmapped exception (a ValueError from the domain) is INTERNAL with an error id,
        # whose traceback the service logged under that id.
        with pytest.raises(grpc.RpcError) as bug:
            svc.call("Count", " ... ")
        code, details = code_of(bug.value)
        assert code is grpc.StatusCode.INTERNAL, details
        found = re.fullmatch(r"internal error ([0-9a-f]{8}) \(StatisticsError\): .*", details)
        assert found, details
        assert wait_for(lambda: svc.logged("rpc_internal_error", f"error_id={found.group(1)}"))

        # Metrics: the runner's interceptor counted this service's calls by method and code.
        assert svc.handled("Count", "OK") == 1
        assert svc.handled("Count", "UNAUTHENTICATED") == 2
        assert svc.handled("Count", "INVALID_ARGUMENT") == 1
        assert svc.handled("Count", "INTERNAL") == 1
        assert svc.handled("StartTally", "PERMISSION_DENIED") == 1

        # Jobs: a tally runs through the registry; a second is refused while it runs.
        text = " ".join(f"w{i % 97}" for i in range(40 * CHUNK))  # 40 chunks at 0.5 s each
        first = svc.call("StartTally", text)
        assert isinstance(first, wrappers_pb2.StringValue)
        with pytest.raises(grpc.RpcError) as busy:
            svc.call("StartTally", "a b c")
        code, details = code_of(busy.value)
        assert code is grpc.StatusCode.ABORTED and first.value in details
        assert svc.tally(first.value)["state"] == "running"

        # Reload: the live pace edited in the file reaches the running tally, which then ends.
        applied = svc.reloads("applied")
        svc.edit({"pace_s": 0.0})
        assert wait_for(lambda: svc.reloads("applied") == applied + 1)
        assert wait_for(lambda: svc.tally(first.value)["state"] == "succeeded", within=30)
        done = svc.tally(first.value)
        assert (done["words"], done["distinct"], done["progress"]) == (40 * CHUNK, 97, 1.0)
        second = svc.call("StartTally", "a b c")
        assert isinstance(second, wrappers_pb2.StringValue)
        assert wait_for(lambda: svc.tally(second.value)["state"] == "succeeded")
        with pytest.raises(grpc.RpcError) as unknown:
            svc.tally("no-such-job")
        assert code_of(unknown.value)[0] is grpc.StatusCode.NOT_FOUND

        # A key that is not live is reported "restart needed" and the running value stays.
        held = svc.reloads("restart_needed")
        svc.edit({"max_chars": 10})
        assert wait_for(lambda: svc.reloads("restart_needed") == held + 1)
        restart = (
            "config_change_needs_restart",
            "key=words.max_chars",
            "running=200000",
            "file=10",
        )
        assert wait_for(lambda: svc.logged(*restart))
        still = svc.call("Count", "longer than ten characters")
        assert isinstance(still, struct_pb2.Struct) and still["words"] == 4

        # SIGTERM: the runner shuts it down cleanly (exit code 0).
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(30) == 0, svc.log.read_text()
