"""The servicer's error map (common/rpc.py): a failure the vault has no rule for is its own fault,
INTERNAL with an error id in the log (it was UNKNOWN), never blamed on the client. The mapped codes
are tested where their causes are (test_bad_input, test_disk_full, test_stream_bounds, faults)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import grpc
import pytest

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from tests.episodic_vault.conftest import VaultFactory, good_episode


def test_an_unmapped_storage_failure_is_internal_with_an_error_id(
    start_vault: VaultFactory,
) -> None:
    v = start_vault(vault={"backend": "sqlite", "embedding_dim": 8})
    v.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(1)))
    db = Path(v.settings.vault.sqlite.path)
    # Another process breaks the store under the running vault: its next query fails with an
    # sqlite3.OperationalError ("no such table"), which no rule maps.
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE episodes RENAME TO episodes_moved")
    try:
        with pytest.raises(grpc.RpcError) as err:
            v.stub.ListRecent(pb.ListRecentRequest())
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert re.fullmatch(
            r"internal error [0-9a-f]{8} \(OperationalError\): the service logged its cause "
            r"under this error id",
            err.value.details() or "",
        )
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE episodes_moved RENAME TO episodes")
    # The store back, the same call answers: nothing in the vault was left broken.
    listed = v.stub.ListRecent(pb.ListRecentRequest())
    assert [e.id for e in listed.episodes] == ["ep-1"]
