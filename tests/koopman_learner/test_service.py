"""The KoopmanLearner over real gRPC: modes in physical units, online updates, prediction,
stability, configuration, reset, persistence across restarts, metrics and bad input."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from mcp_services.common import metric_names as names
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain.synthetic import LinearSystem, oscillator_system, simulate
from tests.conftest import scrape_until
from tests.koopman_learner.conftest import Learner, LearnerFactory, batch, stop, trace_proto

DT = 0.1
N = 12
IDS = [f"concept:{i}" for i in range(N)]
FREQUENCIES = [0.5, 1.2, 2.0]
GROWTH = [-0.05, 0.05, -0.2]  # the 1.2 Hz oscillation grows: |lambda| > 1
# The constant offset 0.5 (activations live in [0, 1]) is a mode with lambda = 1.
SYSTEM = oscillator_system(N, FREQUENCIES, GROWTH, DT, seed=7)
TRUE_EIGENVALUES = np.concatenate([SYSTEM.eigenvalues, [1.0]])


def _traces(system: LinearSystem, n_traces: int, length: int, seed: int) -> list[np.ndarray]:
    traces = simulate(
        system, n_traces=n_traces, length=length, seed=seed, offset=0.5, amplitudes=[0.1] * 3
    )
    for t in traces:
        assert t.min() >= 0 and t.max() <= 1 and t.max() > 0.5
    return traces


def _eigenvalues(modes: list[pb.SpectralMode]) -> np.ndarray:
    return np.array([complex(m.eigenvalue_real, m.eigenvalue_imag) for m in modes])


def _max_gap(found: np.ndarray, truth: np.ndarray) -> float:
    """Largest distance from a true eigenvalue to the nearest found one (and back)."""
    d = np.abs(found[:, None] - truth[None, :])
    return float(max(d.min(axis=0).max(), d.min(axis=1).max()))


def _code(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()


@pytest.fixture
def fitted(start_learner: LearnerFactory) -> Learner:
    learner = start_learner()
    reply = learner.stub.ProcessActivationBatch(batch(_traces(SYSTEM, 3, 80, seed=1), IDS))
    assert reply.update.kind == pb.UPDATE_KIND_REFIT
    return learner


class TestModes:
    def test_a_noise_free_system_is_recovered_in_physical_units(self, fitted: Learner) -> None:
        """Eigenvalues to 1e-8; frequency arg(lambda)/(2 pi dt) in Hz and growth ln|lambda|/dt."""
        reply = fitted.stub.GetSpectralModes(pb.GetSpectralModesRequest())
        assert reply.total_modes == len(TRUE_EIGENVALUES) == len(reply.modes)
        assert _max_gap(_eigenvalues(list(reply.modes)), TRUE_EIGENVALUES) < 1e-8
        positive = sorted(
            (m.frequency_hz, m.growth_rate) for m in reply.modes if m.frequency_hz > 0
        )
        assert np.allclose([f for f, _ in positive], FREQUENCIES, atol=1e-7)
        assert np.allclose([g for _, g in positive], GROWTH, atol=1e-6)
        assert reply.dt_s == DT and reply.concept_count == N and reply.model_version >= 1
        for mode in reply.modes:
            assert len(mode.dominant_concepts) == 5
            assert mode.dominant_concepts[0].phase_shift == 0.0
            assert all(d.concept_id in IDS for d in mode.dominant_concepts)

    def test_sorting_limits_and_filters(self, fitted: Learner) -> None:
        """Sort by |frequency| ascending, keep one half per pair, drop the growing pair, limit."""
        stub = fitted.stub
        by_freq = stub.GetSpectralModes(
            pb.GetSpectralModesRequest(
                sort_by=pb.MODE_SORT_FREQUENCY, ascending=True, collapse_conjugates=True
            )
        ).modes
        assert [round(m.frequency_hz, 6) for m in by_freq] == [0.0, 0.5, 1.2, 2.0]
        stable = stub.GetSpectralModes(
            pb.GetSpectralModesRequest(exclude_unstable=True, collapse_conjugates=True)
        ).modes
        assert sorted(round(m.frequency_hz, 6) for m in stable) == [0.0, 0.5, 2.0]
        assert all(m.stable for m in stable)
        by_growth = stub.GetSpectralModes(
            pb.GetSpectralModesRequest(sort_by=pb.MODE_SORT_GROWTH_RATE, limit=2)
        ).modes
        assert len(by_growth) == 2
        assert all(abs(m.growth_rate - 0.05) < 1e-6 for m in by_growth)
        by_amplitude = stub.GetSpectralModes(
            pb.GetSpectralModesRequest(sort_by=pb.MODE_SORT_AMPLITUDE)
        ).modes
        amplitudes = [m.amplitude for m in by_amplitude]
        assert amplitudes == sorted(amplitudes, reverse=True)
        significance = [
            m.significance for m in stub.GetSpectralModes(pb.GetSpectralModesRequest()).modes
        ]
        assert significance == sorted(significance, reverse=True)

    def test_stability_names_the_growing_modes(self, fitted: Learner) -> None:
        """|lambda| > 1 modes are listed; the spectral radius is that of the growing pair."""
        report = fitted.stub.GetStabilityAnalysis(pb.GetStabilityAnalysisRequest())
        assert not report.stable
        assert len(report.unstable_modes) == 2
        assert report.spectral_radius == pytest.approx(math.exp(0.05 * DT), abs=1e-9)
        assert report.max_growth_rate == pytest.approx(0.05, abs=1e-6)
        assert all(abs(m.frequency_hz) == pytest.approx(1.2) for m in report.unstable_modes)

    def test_prediction_follows_the_true_trajectory(self, fitted: Learner) -> None:
        """From a state of the system, 30 steps ahead match the noise-free truth."""
        (truth,) = _traces(SYSTEM, 1, 31, seed=99)
        state = pb.ConceptActivation(
            concept_ids=[*IDS, "concept:unknown"], strengths=[*truth[:, 0].tolist(), 0.3]
        )
        reply = fitted.stub.PredictActivations(pb.PredictActivationsRequest(state=state, steps=30))
        assert list(reply.concept_ids) == IDS
        assert list(reply.ignored_concepts) == ["concept:unknown"]
        predicted = np.array([p.strengths for p in reply.predictions]).T
        assert predicted.shape == (N, 31)
        assert np.max(np.abs(predicted - truth)) < 1e-7
        assert reply.predictions[30].time_s == pytest.approx(3.0)
        assert len(reply.modes_used) == len(TRUE_EIGENVALUES)


class TestOnline:
    def test_new_traces_update_online_and_report_out_of_sample_error(self, fitted: Learner) -> None:
        """A second batch over the same concepts is an online update; the model already
        predicts it (error ~ 0) and the eigenvalues stay exact."""
        reply = fitted.stub.ProcessActivationBatch(batch(_traces(SYSTEM, 2, 60, seed=2), IDS))
        assert reply.update.kind == pb.UPDATE_KIND_ONLINE
        assert reply.update.prediction_error < 1e-8
        modes = fitted.stub.GetSpectralModes(pb.GetSpectralModesRequest()).modes
        assert _max_gap(_eigenvalues(list(modes)), TRUE_EIGENVALUES) < 1e-6
        stats = fitted.stub.GetKclStats(pb.GetKclStatsRequest())
        assert stats.online_updates == 2 * 59 and stats.refits == 1
        assert stats.snapshots_processed == 3 * 80 + 2 * 60
        assert stats.prediction_error < 1e-8

    def test_a_new_active_concept_forces_a_refit(self, fitted: Learner) -> None:
        """Traces over a concept the model does not cover cannot be absorbed online."""
        trace = _traces(SYSTEM, 1, 40, seed=3)[0]
        extra = np.vstack([trace, np.full((1, 40), 0.9)])
        reply = fitted.stub.ProcessActivationBatch(batch([extra], [*IDS, "concept:new"]))
        assert reply.update.kind == pb.UPDATE_KIND_REFIT
        stats = fitted.stub.GetKclStats(pb.GetKclStatsRequest())
        assert stats.concept_count == N + 1 and stats.refits == 2

    def test_traces_are_never_joined(self, start_learner: LearnerFactory) -> None:
        """Two traces from different states fit exactly; joined, the seam would break the fit."""
        learner = start_learner()
        a, b = _traces(SYSTEM, 2, 40, seed=4)
        learner.stub.ProcessActivationBatch(batch([a, b], IDS))
        modes = learner.stub.GetSpectralModes(pb.GetSpectralModesRequest()).modes
        assert _max_gap(_eigenvalues(list(modes)), TRUE_EIGENVALUES) < 1e-8


class TestConfig:
    def test_update_config_applies_and_validates(self, fitted: Learner) -> None:
        """Valid knobs show in GetConfig; a bad one is refused naming it and changes nothing."""
        cfg = fitted.stub.UpdateConfig(pb.UpdateConfigRequest(max_modes=4, auto_tune=True))
        assert cfg.max_modes == 4 and cfg.auto_tune and cfg.rank == 50
        for request, field in [
            (pb.UpdateConfigRequest(rank=0), "rank"),
            (pb.UpdateConfigRequest(rank=80), "rank_high"),
            (pb.UpdateConfigRequest(l1_strength=1.5), "l1_strength"),
            (pb.UpdateConfigRequest(forgetting_factor=0.0), "forgetting_factor"),
            (pb.UpdateConfigRequest(psi_drift_threshold=-1), "psi_drift_threshold"),
            (pb.UpdateConfigRequest(max_modes=0), "max_modes"),
        ]:
            with pytest.raises(grpc.RpcError) as excinfo:
                fitted.stub.UpdateConfig(request)
            assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
            assert field in excinfo.value.details()
        assert fitted.stub.GetConfig(pb.GetConfigRequest()) == cfg
        reply = fitted.stub.ProcessActivationBatch(
            pb.ProcessActivationBatchRequest(force_refit=True)
        )
        assert reply.update.kind == pb.UPDATE_KIND_REFIT
        # max_modes is a hard cap; conjugate pairs are kept or dropped together.
        assert 0 < reply.update.mode_count <= 4

    def test_raising_l1_strength_keeps_fewer_modes(self, fitted: Learner) -> None:
        """KCL_L1_STRENGTH up -> mode count down (here 7 -> fewer), monotonically."""
        counts = []
        for strength in (0.0, 0.05, 0.3, 0.9):
            fitted.stub.UpdateConfig(pb.UpdateConfigRequest(l1_strength=strength))
            reply = fitted.stub.ProcessActivationBatch(
                pb.ProcessActivationBatchRequest(force_refit=True)
            )
            counts.append(reply.update.mode_count)
        assert counts[0] == len(TRUE_EIGENVALUES)
        assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]

    def test_reset_forgets_the_model(self, fitted: Learner) -> None:
        before = fitted.stub.GetKclStats(pb.GetKclStatsRequest()).model_version
        reply = fitted.stub.ResetSystem(pb.ResetSystemRequest())
        assert reply.model_version > before
        stats = fitted.stub.GetKclStats(pb.GetKclStatsRequest())
        assert not stats.model_ready and stats.mode_count == 0
        with pytest.raises(grpc.RpcError) as excinfo:
            fitted.stub.GetSpectralModes(pb.GetSpectralModesRequest())
        assert _code(excinfo) == grpc.StatusCode.FAILED_PRECONDITION


class TestPersistence:
    def test_modes_and_state_survive_a_restart(self, start_learner: LearnerFactory) -> None:
        """Stop and start on the same data dir: the same modes, version and counters."""
        learner = start_learner()
        learner.stub.ProcessActivationBatch(batch(_traces(SYSTEM, 3, 80, seed=1), IDS))
        before = learner.stub.GetSpectralModes(pb.GetSpectralModesRequest())
        stats = learner.stub.GetKclStats(pb.GetKclStatsRequest())
        stop(learner)
        again = start_learner(settings=learner.settings)
        assert again.stub.GetSpectralModes(pb.GetSpectralModesRequest()) == before
        restored = again.stub.GetKclStats(pb.GetKclStatsRequest())
        assert restored.model_version == stats.model_version
        assert restored.snapshots_processed == stats.snapshots_processed
        # The next batch refits the persisted window plus the new traces.
        reply = again.stub.ProcessActivationBatch(batch(_traces(SYSTEM, 1, 50, seed=5), IDS))
        assert reply.update.kind == pb.UPDATE_KIND_REFIT
        modes = again.stub.GetSpectralModes(pb.GetSpectralModesRequest()).modes
        assert _max_gap(_eigenvalues(list(modes)), TRUE_EIGENVALUES) < 1e-8


class TestBadInput:
    def test_no_model_is_a_failed_precondition(self, start_learner: LearnerFactory) -> None:
        learner = start_learner()
        for call, request in [
            (learner.stub.GetSpectralModes, pb.GetSpectralModesRequest()),
            (learner.stub.GetStabilityAnalysis, pb.GetStabilityAnalysisRequest()),
            (learner.stub.UpdateOscillatorCouplings, pb.UpdateOscillatorCouplingsRequest()),
            (
                learner.stub.PredictActivations,
                pb.PredictActivationsRequest(state=pb.ConceptActivation(), steps=1),
            ),
        ]:
            with pytest.raises(grpc.RpcError) as excinfo:
                call(request)
            assert _code(excinfo) == grpc.StatusCode.FAILED_PRECONDITION
        assert not learner.stub.GetKclStats(pb.GetKclStatsRequest()).model_ready

    def test_malformed_batches_are_refused_naming_the_field(self, fitted: Learner) -> None:
        """Each bad request gets INVALID_ARGUMENT naming the field; the model is unchanged."""
        good = trace_proto(_traces(SYSTEM, 1, 5, seed=6)[0], IDS)
        snap = pb.ConceptActivation
        cases = [
            (pb.ProcessActivationBatchRequest(), "traces"),
            (pb.ProcessActivationBatchRequest(traces=[good], dt_s=0.2), "dt_s"),
            (pb.ProcessActivationBatchRequest(traces=[good], dt_s=-1), "dt_s"),
            (
                pb.ProcessActivationBatchRequest(
                    traces=[good, pb.ActivationTrace(snapshots=[good.snapshots[0]])]
                ),
                "traces[1].snapshots",
            ),
        ]
        for index, (bad, field) in enumerate(
            [
                (snap(concept_ids=["a"], strengths=[1.5]), "strengths[0]"),
                (snap(concept_ids=["a"], strengths=[float("nan")]), "strengths[0]"),
                (snap(concept_ids=["a", "b"], strengths=[0.1]), "strengths"),
                (snap(concept_ids=["a", "a"], strengths=[0.1, 0.2]), "concept_ids[1]"),
                (snap(concept_ids=[""], strengths=[0.1]), "concept_ids[0]"),
                (snap(concept_ids=["a"], strengths=[0.1], phases=[1.0, 2.0]), "phases"),
                (snap(concept_ids=["a"], strengths=[0.1], phases=[float("inf")]), "phases[0]"),
            ]
        ):
            trace = pb.ActivationTrace(snapshots=[good.snapshots[0], bad])
            cases.append(
                (
                    pb.ProcessActivationBatchRequest(traces=[trace]),
                    f"traces[0].snapshots[1].{field}",
                )
            )
            del index
        before = fitted.stub.GetKclStats(pb.GetKclStatsRequest())
        for request, field in cases:
            with pytest.raises(grpc.RpcError) as excinfo:
                fitted.stub.ProcessActivationBatch(request)
            assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT, field
            assert excinfo.value.details().startswith(field), excinfo.value.details()
        assert fitted.stub.GetKclStats(pb.GetKclStatsRequest()) == before

    def test_bad_read_arguments_are_refused(self, fitted: Learner) -> None:
        stub = fitted.stub
        for call, request, field in [
            (stub.GetSpectralModes, pb.GetSpectralModesRequest(limit=-1), "limit"),
            (stub.GetSpectralModes, pb.GetSpectralModesRequest(top_concepts=101), "top_concepts"),
            (stub.PredictActivations, pb.PredictActivationsRequest(steps=0), "steps"),
            (
                stub.PredictActivations,
                pb.PredictActivationsRequest(
                    state=pb.ConceptActivation(concept_ids=["x"], strengths=[2.0]), steps=3
                ),
                "state.strengths[0]",
            ),
            (
                stub.UpdateOscillatorCouplings,
                pb.UpdateOscillatorCouplingsRequest(strength=-1),
                "strength",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as excinfo:
                call(request)
            assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
            assert field in excinfo.value.details()

    def test_an_oversized_batch_is_resource_exhausted(self, start_learner: LearnerFactory) -> None:
        learner = start_learner(max_batch_snapshots=10)
        with pytest.raises(grpc.RpcError) as excinfo:
            learner.stub.ProcessActivationBatch(batch(_traces(SYSTEM, 1, 11, seed=1), IDS))
        assert _code(excinfo) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_batch_snapshots" in excinfo.value.details()


class TestMetrics:
    def test_the_learner_exports_its_metrics(self, fitted: Learner) -> None:
        text = scrape_until(fitted.metrics_url, names.KCL_MODES_TOTAL)
        values = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line and not line.startswith("#") and " " in line
        }
        assert values[names.KCL_MODES_TOTAL] == len(TRUE_EIGENVALUES)
        assert values[names.KCL_RANK] == 50
        assert values[names.KCL_PSI_DRIFT] == 0.0
        assert values[names.KCL_SPECTRAL_RADIUS] == pytest.approx(math.exp(0.05 * DT))
        assert values[f'{names.KCL_UPDATE_SECONDS}_count{{kind="refit"}}'] == 1
        assert values[names.KCL_SNAPSHOTS_PROCESSED] == 240
        assert names.COUPLING_UPDATES_TOTAL in values
        assert names.KCL_PREDICTION_ERROR in text
