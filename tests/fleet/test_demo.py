"""`make demo` on a private native fleet: the first run shows the memory, and runs again."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_services.demo import scenes
from tests.conftest import service_environ
from tests.fleet.test_fleet import fleet, processes_of

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Shown:
    """What the demo's lines claim, parsed back."""

    edges: int
    prunes: list[tuple[int, int, int]]  # (edges before, after, committed version)
    recalls: list[tuple[set[str], set[str], str]]  # (cue, added, scene)
    modes: int


CONSOLIDATED = re.compile(r"^consolidated \d+ episodes: graph v\d+, (\d+) edges", re.M)
PRUNED = re.compile(r"^(?:automatic prune after consolidation|prune --once): "
                    r"(\d+) -> (\d+) edges, committed v(\d+)", re.M)  # fmt: skip
RECALLED = re.compile(
    r"^recall \{(.+)\}: completion \(graph v\d+\) added (.+) \(scene (\w+)\)", re.M
)
LEARNT = re.compile(r"^learner: (\d+) modes", re.M)


def parse(out: str) -> Shown:
    edges = CONSOLIDATED.search(out)
    modes = LEARNT.search(out)
    assert edges and modes, out
    return Shown(
        edges=int(edges[1]),
        prunes=[(int(a), int(b), int(v)) for a, b, v in PRUNED.findall(out)],
        recalls=[
            (set(cue.split(", ")), set(added.split(", ")), scene)
            for cue, added, scene in RECALLED.findall(out)
        ],
        modes=int(modes[1]),
    )


def make_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The venv running the suite is the fleet's; -o: take it as installed (never reinstall here).
    venv = sys.prefix
    return subprocess.run(
        ["make", "--no-print-directory", "-o", f"{venv}/.installed-stamp", "demo",
         f"VENV={venv}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture
def private(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private fleet's environment (free ports, own var dir); whatever started is stopped."""
    env = service_environ(tmp_path / "fleet")
    try:
        yield env
    finally:
        fleet("down", env)
        assert processes_of(env["TORI_VAR_DIR"]) == [], "stray processes after down"


def assert_shows_the_memory(out: str) -> None:
    shown = parse(out)
    assert shown.edges > 0, out
    assert shown.prunes, f"no committed prune:\n{out}"
    for before, after, version in shown.prunes:
        assert before >= after > 0 and version > 0, out
    assert [scene for *_, scene in shown.recalls] == [scene for scene, _ in scenes.CUES], out
    for (scene, cue), (shown_cue, added, _) in zip(scenes.CUES, shown.recalls, strict=True):
        assert shown_cue == set(cue) and added and not added & shown_cue, out
        assert added & set(scenes.SCENES[scene]), f"completion added nothing of {scene}: {out}"
    assert shown.modes >= 1, out


class TestDemo:
    @pytest.mark.timeout(900)  # a fleet start and two demos on a loaded two-core machine
    def test_make_demo_starts_a_fleet_shows_the_memory_and_runs_again(
        self, private: dict[str, str]
    ) -> None:
        """`make demo` on an empty var dir starts the fleet and prints edges after
        consolidation, a committed prune with edges before and after, recalls whose completion
        added concepts of the cued scene the cue lacked, and learner modes; a second `make demo`
        on the running fleet (holding the first run's data) does the same."""
        first = make_demo(private)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "fleet up:" in first.stdout
        assert_shows_the_memory(first.stdout)
        second = make_demo(private)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "fleet up:" not in second.stdout and "already running" not in second.stderr
        assert_shows_the_memory(second.stdout)
        # The second run stored its own episodes next to the first's.
        files = sorted((Path(private["TORI_VAR_DIR"]) / "demo").glob("*.jsonl"))
        assert len(files) == 2

    def test_without_a_fleet_it_fails_naming_the_step_and_the_way_out(
        self, private: dict[str, str]
    ) -> None:
        """With nothing listening, the demo exits 1 at its first step, says which command
        failed, and points to `make status` / `make up`."""
        proc = subprocess.run(
            [sys.executable, "-m", "mcp_services.demo"],
            cwd=ROOT, env=private, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "demo failed: `.venv/bin/vault-cli put-file" in proc.stderr
        assert "UNAVAILABLE" in proc.stderr and "make up" in proc.stderr
