"""Named streams over real gRPC: their own clock, delay embedding and scaling; modes ranked by
significance; real recorded series and synthetic tones give their known periods."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.rpc.series import (
    REAL_SERIES,
    RealSeries,
    load,
    periods_request,
    series_request,
    tones,
    top_period,
)
from mcp_services.koopman_learner.server import data_dir
from tests.koopman_learner.conftest import LearnerFactory, batch, stop


def _sine(n: int = 120, period: float = 12.0) -> np.ndarray:
    t = np.arange(n)
    return np.asarray(0.5 + 0.3 * np.sin(2 * np.pi * t / period))


def _series(name: str, values: np.ndarray, **options: object) -> pb.ProcessActivationBatchRequest:
    trace = pb.ActivationTrace(
        snapshots=[pb.ConceptActivation(concept_ids=["x"], strengths=[float(v)]) for v in values]
    )
    return pb.ProcessActivationBatchRequest(
        traces=[trace],
        stream=name,
        options=pb.StreamOptions(**options),  # type: ignore[arg-type]
    )


def _error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as excinfo:
        call()  # type: ignore[operator]
    return excinfo.value


class TestRealSeries:
    @pytest.mark.parametrize("series", REAL_SERIES, ids=lambda s: s.name)
    def test_the_known_period_is_the_top_significant_mode_within_2_percent(
        self, start_learner: LearnerFactory, series: RealSeries
    ) -> None:
        """The series as one concept, raw values (min-max scaled), its times in its unit (dt
        inferred), delays automatic: the most significant oscillating mode has its known period."""
        learner = start_learner()
        times, values = load(series)
        reply = learner.stub.ProcessActivationBatch(
            series_request(series.name, series.name, times, values, time_unit=series.time_unit),
            timeout=60,
        )
        assert reply.update.kind == pb.UPDATE_KIND_REFIT
        assert reply.update.stream.delays >= 2 and reply.update.stream.delays_automatic
        modes = learner.stub.GetSpectralModes(periods_request(series.name), timeout=30)
        assert modes.time_unit == series.time_unit
        found = top_period(modes)
        assert abs(found - series.known_period) <= 0.02 * series.known_period, modes.modes


class TestSyntheticTones:
    @pytest.mark.parametrize("periods", [(12.0, 31.0), (9.0, 23.0, 57.0)], ids=["two", "three"])
    @pytest.mark.parametrize("sigma", [0.02, 0.1])
    def test_tones_with_noise_trend_and_gaps_come_back_within_1_percent(
        self, start_learner: LearnerFactory, periods: tuple[float, ...], sigma: float
    ) -> None:
        """Tones plus noise, a trend, 10% of samples missing and a damped transient twice the
        largest tone: the leading significant modes are the tones (each within 1%), and the top
        one is never the transient."""
        learner = start_learner()
        for seed in range(3):
            series = tones(periods, sigma=sigma, seed=seed)
            name = f"tones-{seed}"
            learner.stub.ProcessActivationBatch(
                series_request(name, "x", series.times, series.values, time_unit="s"), timeout=60
            )
            modes = learner.stub.GetSpectralModes(periods_request(name), timeout=30).modes
            found = [m.period for m in modes[: len(periods)]]
            for period in periods:
                assert min(abs(f - period) for f in found) <= 0.01 * period, (seed, found)
            assert min(abs(modes[0].period - p) / p for p in periods) <= 0.01
            assert abs(modes[0].period - series.transient_period) > 1.0

    def test_the_damped_transient_is_served_but_not_significant(
        self, start_learner: LearnerFactory
    ) -> None:
        """The 45-sample transient (five times the largest tone at the start) is among the
        served modes, flagged not significant (persistence < 0.2), and left out of the default
        listing, whose modes are all significant."""
        learner = start_learner()
        series = tones((12.0, 31.0), sigma=0.02, seed=1)
        learner.stub.ProcessActivationBatch(
            series_request("t", "x", series.times, series.values, time_unit="s"), timeout=60
        )
        everything = learner.stub.GetSpectralModes(
            pb.GetSpectralModesRequest(
                stream="t", include_insignificant=True, oscillating_only=True,
                collapse_conjugates=True,
            ),
            timeout=30,
        ).modes  # fmt: skip
        (transient,) = [m for m in everything if abs(m.period - 45) < 2]
        assert not transient.significant and transient.persistence < 0.2
        default = learner.stub.GetSpectralModes(periods_request("t", limit=0), timeout=30).modes
        assert default and all(m.significant for m in default)
        assert all(abs(m.period - 45) > 2 for m in default)


class TestStreamClock:
    def test_dt_is_declared_once_and_checked_after(self, start_learner: LearnerFactory) -> None:
        """Declared as 1 month; a later batch saying 2 months, or times stepping by 3, is
        INVALID_ARGUMENT naming the field and the stream's dt, and changes nothing."""
        learner = start_learner()
        stub = learner.stub
        first = stub.ProcessActivationBatch(_series("m", _sine(), dt=1, time_unit="month"))
        info = first.update.stream
        assert (info.name, info.dt, info.time_unit) == ("m", 1.0, "month")
        assert info.dt_s == pytest.approx(365.2425 * 86400 / 12)
        err = _error(lambda: stub.ProcessActivationBatch(_series("m", _sine(), dt=2)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "options.dt is 2" in (err.details() or "") and "dt 1 month" in (err.details() or "")
        timed = _series("m", _sine(30))
        timed.traces[0].times.extend(float(3 * t) for t in range(30))
        err = _error(lambda: stub.ProcessActivationBatch(timed))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "traces[0].times" in (err.details() or "")
        stats = stub.GetKclStats(pb.GetKclStatsRequest())
        (digest,) = [d for d in stats.streams if d.name == "m"]
        assert digest.model_version == first.update.model_version

    def test_a_stream_declared_without_data_needs_its_dt(
        self, start_learner: LearnerFactory
    ) -> None:
        """Options and no traces declare a stream when dt is given; without dt (nothing to
        infer it from) it is INVALID_ARGUMENT naming options.dt, and no stream is made."""
        learner = start_learner()
        bare = pb.ProcessActivationBatchRequest(stream="later", options=pb.StreamOptions())
        err = _error(lambda: learner.stub.ProcessActivationBatch(bare))
        assert (err.details() or "").startswith("options.dt is 0 and the traces carry no times")
        assert not learner.stub.GetKclStats(pb.GetKclStatsRequest()).streams
        bare.options.dt, bare.options.time_unit = 1, "d"
        reply = learner.stub.ProcessActivationBatch(bare)
        assert reply.update.kind == pb.UPDATE_KIND_NONE and reply.update.stream.time_unit == "d"
        first = learner.stub.ProcessActivationBatch(_series("later", _sine()))
        assert first.update.stream.delays == 40 and first.update.stream.delays_automatic

    def test_periods_are_in_the_streams_unit_and_frequencies_in_hz(
        self, start_learner: LearnerFactory
    ) -> None:
        """A 12-sample sine sampled monthly: period 12 months; frequency 1 / (12 months in s)."""
        learner = start_learner()
        learner.stub.ProcessActivationBatch(_series("m", _sine(), dt=1, time_unit="month"))
        top = learner.stub.GetSpectralModes(periods_request("m")).modes[0]
        assert top.period == pytest.approx(12.0, rel=1e-3)
        assert abs(top.frequency_hz) == pytest.approx(1 / (365.2425 * 86400), rel=1e-3)

    def test_the_default_streams_dt_mismatch_names_the_setting(
        self, start_learner: LearnerFactory
    ) -> None:
        """dt_s other than koopman_learner.dt_s on the default stream names KCL_DT_S and the way
        out (a named stream)."""
        learner = start_learner()
        request = batch([np.vstack([_sine(20), _sine(20)])], ["a", "b"])
        request.dt_s = 1.0
        err = _error(lambda: learner.stub.ProcessActivationBatch(request))
        details = err.details() or ""
        assert "koopman_learner.dt_s" in details and "KCL_DT_S" in details
        assert "name a stream" in details


class TestEmbeddingAndScaling:
    def test_one_concept_without_delays_gets_a_note(self, start_learner: LearnerFactory) -> None:
        """A one-concept stream with delays 1 fits one real mode and the reply says why and how
        to fix it; the default stream says so too."""
        learner = start_learner()
        reply = learner.stub.ProcessActivationBatch(_series("flat", _sine(), dt=1, delays=1))
        assert "cannot oscillate" in reply.update.note and "options.delays" in reply.update.note
        default = learner.stub.ProcessActivationBatch(batch([_sine()[None, :]], ["x"]))
        assert "cannot oscillate" in default.update.note and "named stream" in default.update.note

    def test_explicit_delays_are_used_and_fixed(self, start_learner: LearnerFactory) -> None:
        """delays=24 embeds 24 rows; a later batch asking for 12 is refused."""
        learner = start_learner()
        reply = learner.stub.ProcessActivationBatch(_series("d", _sine(), dt=1, delays=24))
        assert (reply.update.stream.delays, reply.update.stream.delays_automatic) == (24, False)
        assert learner.stub.GetSpectralModes(periods_request("d")).concept_count == 24
        err = _error(lambda: learner.stub.ProcessActivationBatch(_series("d", _sine(), delays=12)))
        assert "options.delays is 12" in (err.details() or "")

    def test_more_embedded_rows_than_max_concepts_are_refused(
        self, start_learner: LearnerFactory
    ) -> None:
        """3 concepts x 24 delays over max_concepts 50: INVALID_ARGUMENT naming options.delays
        and the setting; the stream is not declared."""
        learner = start_learner(max_concepts=50)
        trace = pb.ActivationTrace(
            snapshots=[
                pb.ConceptActivation(concept_ids=["a", "b", "c"], strengths=[v, v, v])
                for v in _sine()
            ]
        )
        request = pb.ProcessActivationBatchRequest(
            traces=[trace], stream="wide", options=pb.StreamOptions(dt=1, delays=24)
        )
        err = _error(lambda: learner.stub.ProcessActivationBatch(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "options.delays 24 x 3 concepts exceed koopman_learner.max_concepts (50)" in (
            err.details() or ""
        )
        stats = learner.stub.GetKclStats(pb.GetKclStatsRequest())
        assert not stats.streams
        missing = _error(lambda: learner.stub.GetSpectralModes(periods_request("wide")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND

    def test_raw_values_need_a_scaling(self, start_learner: LearnerFactory) -> None:
        """Values outside [0, 1] without scaling: INVALID_ARGUMENT naming the strengths field and
        options.scaling; with min-max they are accepted and the scaling is reported."""
        learner = start_learner()
        raw = 1000 + 400 * _sine()
        err = _error(lambda: learner.stub.ProcessActivationBatch(_series("r", raw, dt=1)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "strengths" in (err.details() or "") and "options.scaling" in (err.details() or "")
        reply = learner.stub.ProcessActivationBatch(
            _series("r", raw, dt=1, scaling=pb.SCALING_MINMAX)
        )
        info = reply.update.stream
        assert info.scaling == pb.SCALING_MINMAX
        (scaling,) = info.concept_scaling
        assert scaling.concept_id == "x"
        assert scaling.offset == pytest.approx(raw.min())
        assert scaling.scale == pytest.approx(raw.max() - raw.min())

    def test_options_are_refused_on_the_default_stream(self, start_learner: LearnerFactory) -> None:
        """options without a stream name: INVALID_ARGUMENT naming options."""
        learner = start_learner()
        request = _series("", _sine(), dt=1)
        err = _error(lambda: learner.stub.ProcessActivationBatch(request))
        assert (err.details() or "").startswith("options is only for a named stream")


class TestStreamLifecycle:
    def test_an_unknown_stream_is_not_found(self, start_learner: LearnerFactory) -> None:
        """GetSpectralModes of a stream never sent: NOT_FOUND naming it."""
        learner = start_learner()
        err = _error(lambda: learner.stub.GetSpectralModes(periods_request("nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in (err.details() or "")

    def test_reset_forgets_one_stream_and_its_options(self, start_learner: LearnerFactory) -> None:
        """ResetSystem(stream) removes that stream only; it can then be declared at another dt."""
        learner = start_learner()
        stub = learner.stub
        stub.ProcessActivationBatch(_series("a", _sine(), dt=1, time_unit="month"))
        stub.ProcessActivationBatch(_series("b", _sine(), dt=1, time_unit="d"))
        stub.ResetSystem(pb.ResetSystemRequest(stream="a"))
        names = [d.name for d in stub.GetKclStats(pb.GetKclStatsRequest()).streams]
        assert names == ["b"]
        again = stub.ProcessActivationBatch(_series("a", _sine(), dt=3, time_unit="h"))
        assert (again.update.stream.dt, again.update.stream.time_unit) == (3.0, "h")
        err = _error(lambda: stub.ResetSystem(pb.ResetSystemRequest(stream="zzz")))
        assert err.code() == grpc.StatusCode.NOT_FOUND

    def test_streams_survive_a_restart(self, start_learner: LearnerFactory) -> None:
        """A restarted learner on the same data dir serves the stream's modes, unit and options;
        the stream's file sits at the top of the data dir, where backups copy files from."""
        learner = start_learner()
        learner.stub.ProcessActivationBatch(
            _series(
                "keep", 1000 + 400 * _sine(), dt=1, time_unit="month", scaling=pb.SCALING_ROBUST
            )
        )
        before = learner.stub.GetSpectralModes(periods_request("keep"))
        assert len(list(data_dir(learner.settings).glob("stream-*.npz"))) == 1
        stop(learner)
        again = start_learner(settings=learner.settings)
        after = again.stub.GetSpectralModes(periods_request("keep"))
        assert after.stream.scaling == pb.SCALING_ROBUST and after.time_unit == "month"
        assert [m.period for m in after.modes] == [m.period for m in before.modes]
        assert after.model_version == before.model_version

    def test_more_streams_than_allowed_is_resource_exhausted(
        self, start_learner: LearnerFactory
    ) -> None:
        """With max_streams 1 a second stream is refused naming the setting."""
        learner = start_learner(max_streams=1)
        learner.stub.ProcessActivationBatch(_series("one", _sine(), dt=1))
        err = _error(lambda: learner.stub.ProcessActivationBatch(_series("two", _sine(), dt=1)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "koopman_learner.max_streams (1)" in (err.details() or "")

    def test_kcl_stats_list_each_streams_leading_periods(
        self, start_learner: LearnerFactory
    ) -> None:
        """GetKclStats carries each stream with its unit and its most significant period."""
        learner = start_learner()
        learner.stub.ProcessActivationBatch(_series("m", _sine(), dt=1, time_unit="month"))
        (digest,) = learner.stub.GetKclStats(pb.GetKclStatsRequest()).streams
        assert (digest.name, digest.time_unit, digest.delays) == ("m", "month", 40)
        assert digest.periods[0].period == pytest.approx(12.0, rel=1e-3)
