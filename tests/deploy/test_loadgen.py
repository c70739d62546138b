"""tori-loadgen against a real vault: rate, summary, verification, and stopping cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.loadgen.cli import main, parse_duration
from mcp_services.loadgen.retention import SendTimes, horizon_of, scrape_pruned
from mcp_services.loadgen.runner import LoadConfig, LoadRun, Targets
from mcp_services.loadgen.stats import LatencyHistogram
from mcp_services.loadgen.workload import MixError, Workload, parse_mix
from tests.episodic_vault.conftest import Vault, VaultFactory

DIM = 8


@pytest.fixture
def vault(start_vault: VaultFactory) -> Vault:
    return start_vault(vault={"backend": "sqlite", "embedding_dim": DIM})


def load_config(tmp_path: Path, **kw: object) -> LoadConfig:
    base: dict[str, object] = {
        "rate": 150.0,
        "duration_s": 2.0,
        "mix": parse_mix("put=70,get=30"),
        "workload": Workload(seed=7, run_id="t", embedding_dim=DIM),
        "progress_every_s": 0.5,
        "stop_file": tmp_path / "stop",
    }
    base.update(kw)
    return LoadConfig(**base)  # type: ignore[arg-type]


def targets(vault: Vault) -> Targets:
    # Only the vault runs here; the other services are not called with triggers off.
    return Targets(vault.target, "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1")


def run(cfg: LoadConfig, tg: Targets) -> tuple[LoadRun, dict[str, object]]:
    lr = LoadRun(cfg, tg, out=sys.stderr)
    summary = asyncio.run(lr.run(asyncio.Event(), asyncio.Event()))
    return lr, summary


class TestWorkload:
    def test_episodes_are_a_pure_function_of_seed_and_number(self) -> None:
        """Episode n is regenerated identically (that is how the end check works without a copy)
        and differs from episode n+1."""
        a, b = Workload(1, "r", DIM), Workload(1, "r", DIM)
        assert a.episode(5) == b.episode(5) and a.episode(5) != a.episode(6)
        assert Workload(2, "r", DIM).episode(5) != a.episode(5)
        assert len(a.episode(5).embedding) == DIM

    def test_mix_parses_and_refuses_bad_weights_by_name(self) -> None:
        """Weights normalise; an unknown op, a negative weight or an all-zero mix is refused with
        a message naming the fix."""
        assert parse_mix("put=3,get=1") == {"put": 0.75, "get": 0.25, "search": 0.0, "recall": 0.0}
        for bad, needle in [("delete=1", "op one of"), ("put=-1", ">= 0"), ("put=0", "> 0"),
                            ("get=1", "put must be > 0"), ("put=x", "number")]:  # fmt: skip
            with pytest.raises(MixError, match=needle):
                parse_mix(bad)

    def test_durations_and_percentiles(self) -> None:
        """10m is 600 s; the histogram's percentiles fall within its 5% bucket width."""
        assert parse_duration("10m") == 600 and parse_duration("24h") == 86400
        h = LatencyHistogram()
        for i in range(1, 1001):
            h.observe(i / 1000)
        assert 0.5 <= h.percentile(50) <= 0.5 * 1.05
        assert 0.99 <= h.percentile(99) <= 0.99 * 1.05


class TestAgainstAVault:
    def test_run_holds_the_rate_and_verifies_every_acknowledged_put(
        self, vault: Vault, tmp_path: Path
    ) -> None:
        """At 150 ops/s for 2 s: every put acknowledged is read back unchanged, no errors, and the
        vault holds exactly the acknowledged episodes."""
        _lr, s = run(load_config(tmp_path), targets(vault))
        assert s["ok"] is True and s["errors"] == 0, s
        assert s["operations"] == 300
        v = s["verify"]
        assert isinstance(v, dict)
        assert v["acknowledged"] == v["checked"] == s["puts_acknowledged"] == vault.count() > 150
        assert v["lost"] == v["mismatched"] == 0

    def test_verification_finds_a_lost_episode(self, vault: Vault, tmp_path: Path) -> None:
        """The end check can fail: an acknowledged episode deleted behind the generator's back is
        reported lost."""
        cfg = load_config(tmp_path, verify=False, duration_s=1.0)
        lr, _s = run(cfg, targets(vault))
        victim = cfg.workload.episode_id(3)
        vault.stub.DeleteEpisode(pb.DeleteEpisodeRequest(id=victim))

        async def verify() -> dict[str, object]:
            async with grpc.aio.insecure_channel(vault.target) as ch:
                lr.vault = episodic_pb2_grpc.EpisodicVaultStub(ch)
                return await lr.verify(asyncio.Event())

        result = asyncio.run(verify())
        assert result["lost"] == 1 and result["examples"] == [victim]

    def test_errors_are_counted_and_fail_the_run(self, vault: Vault, tmp_path: Path) -> None:
        """Calls the server refuses are errors by status code, and the summary is not ok."""
        cfg = load_config(
            tmp_path, workload=Workload(seed=1, run_id="t", embedding_dim=DIM + 1), verify=False
        )
        _, s = run(cfg, targets(vault))
        put = s["ops"]["put"]  # type: ignore[index]
        assert put["errors"].get("INVALID_ARGUMENT", 0) > 0 and s["ok"] is False

    def test_cli_stops_cleanly_on_loadgen_stop(self, vault: Vault, tmp_path: Path) -> None:
        """A long run started from the command line ends on `tori-loadgen --stop`, verifies what
        it wrote, prints its summary and exits 0."""
        env = {**os.environ, "TORI_ENV": "test", "TORI_VAR_DIR": str(tmp_path / "var")}
        summary = tmp_path / "summary.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_services.loadgen", "--rate", "100", "--duration", "10m",
             "--mix", "put=1", "--vault", vault.target, "--embedding-dim", str(DIM),
             "--summary-file", str(summary), "--progress-every", "1s"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            pid_file = tmp_path / "var" / "loadgen" / "pid"
            deadline = time.monotonic() + 30
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            while vault.count() < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            stopper = subprocess.run(
                [sys.executable, "-m", "mcp_services.loadgen", "--stop"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert stopper.returncode == 0, stopper.stderr
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        s = json.loads(out)
        assert s["stopped_by"] == "signal" and s["ok"] is True
        assert s["verify"]["checked"] == s["puts_acknowledged"] == vault.count()
        assert json.loads(summary.read_text()) == s
        assert not pid_file.exists()

    def test_bad_usage_is_refused_before_any_call(self, tmp_path: Path) -> None:
        """Bad flags exit 2 with a message naming the flag; nothing is started."""
        assert main(["--rate", "0", "--pid-file", str(tmp_path / "p")]) == 2
        assert main(["--mix", "put=1,fly=2", "--pid-file", str(tmp_path / "p")]) == 2
        assert not (tmp_path / "p").exists()


class _Scheduler(sleep_pb2_grpc.SleepSchedulerServicer):
    """The one scheduler RPC the retention check reads: its recent consolidation jobs."""

    def __init__(self, finished_ms: int) -> None:
        self.finished_ms = finished_ms

    async def GetReplayStats(
        self, request: sleep_pb2.GetReplayStatsRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ReplayStats:
        job = sleep_pb2.ConsolidationJob(job_id="j1", state=sleep_pb2.JOB_STATE_SUCCEEDED)
        job.finished_at.FromMilliseconds(self.finished_ms)
        return sleep_pb2.ReplayStats(cycles_total=1, recent=[job])


def verify_with_scheduler(lr: LoadRun, vault: Vault, finished_ms: int) -> dict[str, object]:
    """Run the end check of `lr` against `vault`, with a scheduler whose newest cycle finished at
    `finished_ms`."""

    async def go() -> dict[str, object]:
        server = grpc.aio.server()
        servicer = _Scheduler(finished_ms)  # type: ignore[abstract]  # serves one RPC
        sleep_pb2_grpc.add_SleepSchedulerServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with (
                grpc.aio.insecure_channel(vault.target) as vch,
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as sch,
            ):
                lr.vault = episodic_pb2_grpc.EpisodicVaultStub(vch)
                lr.retention.scheduler = sleep_pb2_grpc.SleepSchedulerStub(sch)
                return await lr.verify(asyncio.Event())
        finally:
            await server.stop(None)

    return asyncio.run(go())


def metrics_target(vault: Vault) -> str:
    return vault.metrics_url.removeprefix("http://").removesuffix("/metrics")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TestRetention:
    """A vault that prunes (tier max_items): evictions are told apart from losses."""

    LTM_MAX = 40

    @pytest.fixture
    def pruning_vault(self, start_vault: VaultFactory) -> Vault:
        tiers = {"ltm": {"max_items": self.LTM_MAX}, "maintenance_interval_s": 0.2}
        return start_vault(vault={"backend": "sqlite", "embedding_dim": DIM, "tiers": tiers})

    def run_puts(self, vault: Vault, tmp_path: Path) -> tuple[LoadRun, LoadConfig]:
        cfg = load_config(
            tmp_path, verify=False, duration_s=1.0, mix=parse_mix("put=1"),
            retention="consolidated", vault_metrics=metrics_target(vault),
        )  # fmt: skip
        lr, _ = run(cfg, targets(vault))
        return lr, cfg

    def consolidate_and_wait_for_pruning(self, vault: Vault, ids: list[str]) -> int:
        vault.stub.MarkConsolidated(pb.MarkConsolidatedRequest(episode_ids=ids, graph_version=1))
        want = len(ids) - self.LTM_MAX
        deadline = time.monotonic() + 30
        pruned = 0
        while time.monotonic() < deadline:
            pruned = scrape_pruned(metrics_target(vault))
            if pruned >= want:
                break
            time.sleep(0.1)
        return pruned

    def test_horizon_and_send_times(self) -> None:
        """The horizon is the newest cycle's finish, or now while one runs; an episode's send
        time is read as a lower bound from its checkpoint."""
        done = sleep_pb2.ConsolidationJob(state=sleep_pb2.JOB_STATE_SUCCEEDED)
        done.finished_at.FromMilliseconds(5_000)
        stats = sleep_pb2.ReplayStats(recent=[done])
        assert horizon_of(stats, now_ms=9_000) == 5_000
        running = sleep_pb2.ConsolidationJob(state=sleep_pb2.JOB_STATE_RUNNING)
        assert horizon_of(sleep_pb2.ReplayStats(recent=[running, done]), 9_000) == 9_000
        assert horizon_of(sleep_pb2.ReplayStats(), 9_000) == 0
        times = SendTimes()
        for n, ms in [(0, 1000), (1, 1050), (2, 1100), (3, 1250)]:
            times.sent(n, ms)
        assert [times.lower_bound_ms(n) for n in range(5)] == [1000, 1000, 1100, 1250, 1250]

    def test_the_vaults_own_pruning_is_counted_as_eviction_not_loss(
        self, pruning_vault: Vault, tmp_path: Path
    ) -> None:
        """Consolidated episodes pruned by the vault beyond ltm.max_items are evicted: the count
        equals the vault's pruned count, nothing is lost, the rest reads back unchanged."""
        lr, cfg = self.run_puts(pruning_vault, tmp_path)
        acked = lr.acks.numbers()
        ids = [cfg.workload.episode_id(n) for n in acked[:100]]
        pruned = self.consolidate_and_wait_for_pruning(pruning_vault, ids)
        assert pruned == len(ids) - self.LTM_MAX
        v = verify_with_scheduler(lr, pruning_vault, finished_ms=now_ms())
        assert v["evicted"] == v["vault_pruned"] == pruned and v["lost"] == 0, v
        assert v["mismatched"] == 0 and v["checked"] == len(acked)

    def test_a_deletion_beyond_the_vaults_pruned_count_is_lost(
        self, pruning_vault: Vault, tmp_path: Path
    ) -> None:
        """One consolidated episode deleted behind the vault's pruning: it could have been
        pruned, but the vault's count does not cover it, so it is lost (unaccounted)."""
        lr, cfg = self.run_puts(pruning_vault, tmp_path)
        ids = [cfg.workload.episode_id(n) for n in lr.acks.numbers()[:100]]
        pruned = self.consolidate_and_wait_for_pruning(pruning_vault, ids)
        kept = [i for i in ids if _exists(pruning_vault, i)]
        pruning_vault.stub.DeleteEpisode(pb.DeleteEpisodeRequest(id=kept[0]))
        v = verify_with_scheduler(lr, pruning_vault, finished_ms=now_ms())
        assert v["evicted"] == pruned + 1 and v["vault_pruned"] == pruned
        assert v["unaccounted"] == 1 and v["lost"] == 1 and v["lost_protected"] == 0, v

    def test_a_missing_episode_no_cycle_could_have_read_is_lost(
        self, pruning_vault: Vault, tmp_path: Path
    ) -> None:
        """The newest cycle finished before the run: no episode of the run can be in LTM, so
        one missing is lost although the vault may prune."""
        before = now_ms()
        lr, cfg = self.run_puts(pruning_vault, tmp_path)
        victim = cfg.workload.episode_id(lr.acks.numbers()[5])
        pruning_vault.stub.DeleteEpisode(pb.DeleteEpisodeRequest(id=victim))
        v = verify_with_scheduler(lr, pruning_vault, finished_ms=before - 1)
        assert v["lost_protected"] == 1 and v["lost"] == 1 and v["evicted"] == 0, v
        assert v["examples"] == [victim]


def _exists(vault: Vault, episode_id: str) -> bool:
    try:
        vault.stub.GetEpisode(pb.GetEpisodeRequest(id=episode_id))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True
