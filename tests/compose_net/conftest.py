"""The compose-shaped fleet, one per module, and its service logs in every failure report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compose_net.harness import ComposeNet, compose_net
from tests.compose_net.netns import namespace_support

ROOT = Path(__file__).resolve().parents[2]
# Thread pools sized for this 2-core machine (what a compose `cpus:` limit would do); not config.
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Fleet:
    net: ComposeNet
    service_key: str  # the key of the one line of secrets/api_keys ("KEY admin")
    gateway_key: str  # the gateway caller's key (secrets/gateway_api_keys: "KEY default")


def write_secrets(directory: Path) -> tuple[str, str]:
    """Fresh keys in the two secret files, written by `make secrets-up` itself (run in a scratch
    project directory, so its modes are the ones a deployment gets)."""
    project = directory.parent / "make-secrets"
    project.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(project), "secrets-up",
         f"PYTHON={sys.executable}"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    shutil.copytree(project / "secrets", directory, dirs_exist_ok=True)
    service_key = (directory / "api_keys").read_text().split()[0]
    gateway_key = (directory / "gateway_api_keys").read_text().split()[0]
    return service_key, gateway_key


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """docker-compose.yml's fleet up in network namespaces with service auth on.

    The "host" environment compose interpolates from is empty: no TORI_API_KEY in the shell, so
    a tool container authenticates with the key file mounted at /run/secrets/api_keys.
    """
    reason = namespace_support()
    if reason is not None:
        pytest.skip(f"compose-shaped network unavailable: {reason}")
    work = tmp_path_factory.mktemp("compose-net")
    service_key, gateway_key = write_secrets(work / "secrets")
    extra = {k: os.environ.get(k, v) for k, v in THREADS.items()}
    with compose_net(ROOT, work, {}, work / "secrets", extra) as net:
        yield Fleet(net, service_key, gateway_key)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    fleet = getattr(item, "funcargs", {}).get("fleet")
    if report.failed and isinstance(fleet, Fleet):
        report.sections.append(("compose-net service logs (tail)", fleet.net.tails()))
    return report
