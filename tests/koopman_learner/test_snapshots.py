"""Snapshot windows: active concepts, pairs inside traces only, input errors."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import build_window


class TestPairs:
    def test_pairs_never_cross_a_trace_boundary(self) -> None:
        """The last snapshot of one trace is never paired with the first of the next."""
        a = np.array([[1.0, 2.0, 3.0]])
        b = np.array([[10.0, 20.0]])
        window = build_window([a, b], ["c"], active_threshold=-1.0)
        x, y = window.pairs()
        assert x.tolist() == [[1.0, 2.0, 10.0]]
        assert y.tolist() == [[2.0, 3.0, 20.0]]
        assert window.n_pairs == 3
        assert window.pair_slices() == (slice(0, 2), slice(2, 3))

    def test_single_snapshot_traces_are_dropped(self) -> None:
        """A trace with one column carries no pair and does not appear in the window."""
        window = build_window([np.ones((1, 1)), np.ones((1, 2))], ["c"], active_threshold=-1.0)
        assert len(window.traces) == 1
        assert window.n_snapshots == 2


class TestActiveConcepts:
    def test_only_concepts_active_somewhere_are_kept(self) -> None:
        """Rows whose strength never exceeds the threshold are removed, in every trace."""
        first = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.1]])
        second = np.array([[0.1, 0.1], [0.1, 0.1], [0.6, 0.1]])
        window = build_window([first, second], ["a", "b", "c"])
        assert window.concept_ids == ("a", "c")
        assert window.traces[1].tolist() == [[0.1, 0.1], [0.6, 0.1]]

    def test_window_arrays_are_read_only(self) -> None:
        """A frozen window cannot be changed through its arrays."""
        window = build_window([np.ones((1, 3))], ["c"])
        with pytest.raises(ValueError, match="read-only"):
            window.traces[0][0, 0] = 5.0


class TestErrors:
    def test_wrong_row_count_names_the_trace(self) -> None:
        """A trace with the wrong number of rows is rejected with its index in the message."""
        with pytest.raises(ValueError, match=r"traces\[1\] has 3 rows"):
            build_window([np.ones((2, 3)), np.ones((3, 3))], ["a", "b"])

    def test_non_finite_values_are_rejected(self) -> None:
        """NaN in a trace is an input error, not a silent NaN fit."""
        trace = np.ones((1, 3))
        trace[0, 1] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            build_window([trace], ["c"])

    def test_no_active_concept_suggests_lowering_the_threshold(self) -> None:
        """With nothing active the error says how to fix it."""
        with pytest.raises(ValueError, match="lower active_threshold"):
            build_window([np.full((2, 3), 0.1)], ["a", "b"])

    def test_duplicate_ids_are_rejected(self) -> None:
        """Two rows cannot share a concept id."""
        with pytest.raises(ValueError, match="unique"):
            build_window([np.ones((2, 3))], ["a", "a"])

    def test_no_pair_is_rejected(self) -> None:
        """Only single-snapshot traces leave nothing to fit."""
        with pytest.raises(ValueError, match="no snapshot pair"):
            build_window([np.ones((1, 1))], ["a"])
