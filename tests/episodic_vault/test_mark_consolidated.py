"""MarkConsolidated over gRPC: what the SleepScheduler calls after committing a graph."""

from __future__ import annotations

import grpc
import pytest

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from tests.episodic_vault.conftest import Vault, good_episode


def put_n(vault: Vault, n: int) -> None:
    vault.stub.PutEpisodes(iter(pb.PutEpisodeRequest(episode=good_episode(i)) for i in range(n)))


def unconsolidated_ids(vault: Vault) -> list[str]:
    scan = vault.stub.Scan(pb.ScanRequest(only_unconsolidated=True))
    return [r.episode.id for r in scan]


class TestMarkConsolidated:
    def test_marked_episodes_leave_the_unconsolidated_scan_and_count_as_consolidated(
        self, vault: Vault
    ) -> None:
        """After a mark, Scan(only_unconsolidated) skips the episodes and GetStats counts them."""
        put_n(vault, 5)
        resp = vault.stub.MarkConsolidated(
            pb.MarkConsolidatedRequest(episode_ids=["ep-1", "ep-3"], graph_version=2)
        )
        assert (resp.marked, resp.already, list(resp.missing)) == (2, 0, [])
        assert unconsolidated_ids(vault) == ["ep-0", "ep-2", "ep-4"]
        stats = vault.stub.GetStats(pb.GetStatsRequest())
        assert stats.consolidated_count == 2 and stats.unconsolidated_count == 3
        ltm = [t for t in stats.tiers if t.tier == pb.TIER_LTM]
        assert len(ltm) == 1 and ltm[0].episode_count == 2
        got = vault.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-3")).episode
        assert got.consolidated and got.tier == pb.TIER_LTM and got.graph_version == 2

    def test_repeating_a_mark_is_idempotent_and_reports_missing(self, vault: Vault) -> None:
        """A retried call marks nothing new; unknown ids are listed, not an error."""
        put_n(vault, 2)
        req = pb.MarkConsolidatedRequest(episode_ids=["ep-0", "gone"], graph_version=1)
        first = vault.stub.MarkConsolidated(req)
        again = vault.stub.MarkConsolidated(req)
        assert (first.marked, first.already, list(first.missing)) == (1, 0, ["gone"])
        assert (again.marked, again.already, list(again.missing)) == (0, 1, ["gone"])
        assert vault.stub.GetStats(pb.GetStatsRequest()).consolidated_count == 1

    @pytest.mark.parametrize(
        ("ids", "version", "field"),
        [
            ([], 1, "episode_ids"),
            (["ep-0"] * 10_001, 1, "episode_ids"),
            (["ep-0", "bad id!"], 1, "episode_ids[1]"),
            (["ep-0", ""], 1, "episode_ids[1]"),
            (["ep-0"], 0, "graph_version"),
            (["ep-0"], -3, "graph_version"),
        ],
    )
    def test_bad_requests_are_refused_by_field_and_change_nothing(
        self, vault: Vault, ids: list[str], version: int, field: str
    ) -> None:
        """Empty or oversized id lists, malformed ids and versions <= 0 are INVALID_ARGUMENT."""
        put_n(vault, 1)
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.MarkConsolidated(
                pb.MarkConsolidatedRequest(episode_ids=ids, graph_version=version)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field + ":")
        assert unconsolidated_ids(vault) == ["ep-0"]

    def test_ten_thousand_ids_are_accepted(self, vault: Vault) -> None:
        """The upper bound of one call (10000 ids) is served."""
        put_n(vault, 3)
        ids = [f"ep-{i}" for i in range(10_000)]
        resp = vault.stub.MarkConsolidated(
            pb.MarkConsolidatedRequest(episode_ids=ids, graph_version=9)
        )
        assert resp.marked == 3 and len(resp.missing) == 9_997
        assert unconsolidated_ids(vault) == []
