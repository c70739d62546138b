"""The learner's status codes: a bad request is INVALID_ARGUMENT naming the field, while a
ValueError of the numerics (a shape bug, not the client's fault) is INTERNAL with an error id."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from structlog.testing import capture_logs

from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain import learner as learner_module
from mcp_services.koopman_learner.domain.snapshots import SnapshotWindow
from tests.koopman_learner.conftest import LearnerFactory, batch
from tests.koopman_learner.test_service import IDS, SYSTEM, _traces


def a_shape_bug(window: SnapshotWindow, dt: float, **_: object) -> object:
    """fit_dmd with a product of mismatched shapes: numpy's own ValueError, as a shape bug in
    the numerics raises it (a real one cannot be planted in correct code)."""
    x = window.traces[0]
    return np.dot(x, x)  # (n, T) @ (n, T): shapes not aligned


class TestNumericsErrors:
    def test_a_numerics_value_error_is_internal_not_the_clients_fault(
        self, start_learner: LearnerFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A ValueError of the fit under a well-formed batch is INTERNAL, and the id in its
        message names the logged traceback (it used to be INVALID_ARGUMENT, like bad input)."""
        learner = start_learner()
        monkeypatch.setattr(learner_module, "fit_dmd", a_shape_bug)
        with capture_logs() as logs, pytest.raises(grpc.RpcError) as excinfo:
            learner.stub.ProcessActivationBatch(batch(_traces(SYSTEM, 1, 40, seed=1), IDS))
        assert excinfo.value.code() == grpc.StatusCode.INTERNAL
        found = re.search(r"internal error ([0-9a-f]+) \(ValueError\)", excinfo.value.details())
        assert found is not None, excinfo.value.details()
        logged = [e for e in logs if e.get("error_id") == found.group(1)]
        assert len(logged) == 1 and "ProcessActivationBatch" in logged[0]["rpc"]
        assert "not aligned" in logged[0]["exception"]

    def test_the_same_batch_is_learnt_when_the_numerics_are_sound(
        self, start_learner: LearnerFactory
    ) -> None:
        """Without the bug the batch is served: the INTERNAL above came from the numerics."""
        learner = start_learner()
        reply = learner.stub.ProcessActivationBatch(batch(_traces(SYSTEM, 1, 40, seed=1), IDS))
        assert reply.update.kind == pb.UPDATE_KIND_REFIT

    def test_bad_input_is_still_invalid_argument_naming_the_field(
        self, start_learner: LearnerFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Validation runs first and its InputError stays INVALID_ARGUMENT, bug or no bug."""
        learner = start_learner()
        monkeypatch.setattr(learner_module, "fit_dmd", a_shape_bug)
        values = _traces(SYSTEM, 1, 40, seed=1)[0].copy()
        values[3, 5] = 2.0
        with pytest.raises(grpc.RpcError) as excinfo:
            learner.stub.ProcessActivationBatch(batch([values], IDS))
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert excinfo.value.details().startswith("traces[0].snapshots[5].strengths[3] ")

    def test_a_stream_that_contradicts_itself_is_invalid_argument(
        self, start_learner: LearnerFactory
    ) -> None:
        """StreamError (the streams' validation of a named stream) is an InputError too."""
        learner = start_learner()
        traces = _traces(SYSTEM, 1, 20, seed=2)
        first = batch(traces, IDS, stream="s", options=pb.StreamOptions(dt=1, time_unit="s"))
        learner.stub.ProcessActivationBatch(first)
        again = batch(traces, IDS, stream="s", options=pb.StreamOptions(dt=2, time_unit="s"))
        with pytest.raises(grpc.RpcError) as excinfo:
            learner.stub.ProcessActivationBatch(again)
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert excinfo.value.details().startswith("options.dt ")
