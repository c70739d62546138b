"""The learner's section of the configuration (``koopman_learner``), registered with the loader.

An instance is also the learner's knobs (learner.py). The fields marked ``Live`` are the ones a
config reload applies while the learner runs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from mcp_services.common.config_schema import Live, PositiveFloat, StrictModel, register_section


class KoopmanLearnerConfig(StrictModel):
    rank: Annotated[int, Field(ge=1), Live] = 50
    rank_high: Annotated[int, Field(ge=1), Live] = 75
    psi_drift_threshold: Annotated[PositiveFloat, Live] = 0.2
    # Scale-free: 0 keeps every mode, 1 none (see koopman_learner/domain/spdmd.py).
    l1_strength: Annotated[float, Field(ge=0, le=1), Live] = 0.01
    forgetting_factor: Annotated[float, Field(gt=0, le=1), Live] = 0.98
    max_modes: Annotated[int, Field(ge=1), Live] = 100
    auto_tune: Annotated[bool, Live] = False
    # Sampling interval of the activation stream (s); episode frames are resampled onto it.
    dt_s: PositiveFloat = 0.1
    # Learn from the vault (Scan cursor, episode.stored as trigger); off: explicit traces only.
    follow_vault: bool = True
    # host:port of the vault when it differs from the fleet's; empty: services.episodic_vault's
    # dial address (mcp_services/common/clients.py).
    vault_target: str = ""
    # Re-check the vault this often even when no event arrives (a lost event only delays).
    poll_interval_s: PositiveFloat = 5.0
    scan_batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    # Activation-only episodes of one source further apart than this start a new trajectory.
    stream_max_gap_s: PositiveFloat = 1.0
    # Snapshots kept for refits (oldest traces leave first).
    window_snapshots: Annotated[int, Field(ge=10)] = 4000
    # Online updates (snapshot pairs) between full refits.
    refit_interval: Annotated[int, Field(ge=1), Live] = 2000
    # Concepts one fit may cover, and snapshots one ProcessActivationBatch may carry.
    max_concepts: Annotated[int, Field(ge=2), Live] = 2048
    max_batch_snapshots: Annotated[int, Field(ge=2), Live] = 100_000
    # Re-estimate the oscillator couplings after every refit (UpdateOscillatorCouplings always).
    auto_couplings: Annotated[bool, Live] = True
    # Weigh refits by forgetting_factor as the online updates are (off: every pair in the
    # window weighs alike; online updates always discount).
    weight_refits: Annotated[bool, Live] = False
    # A mode keeping less than this share of its amplitude on average over the window is not
    # significant and left out of the mode summaries by default (koopman_learner/domain/modes.py).
    min_persistence: Annotated[float, Field(ge=0, le=1), Live] = 0.2
    # Largest delay embedding of a named stream, and how many named streams may exist.
    max_delays: Annotated[int, Field(ge=1, le=1024), Live] = 200
    max_streams: Annotated[int, Field(ge=0), Live] = 64
    # Modes, couplings, window and cursor; empty: <paths.var_dir>/data/koopman.
    data_dir: str = ""

    @model_validator(mode="after")
    def _rank_order(self) -> KoopmanLearnerConfig:
        if self.rank_high < self.rank:
            raise ValueError(f"rank_high ({self.rank_high}) must be >= rank ({self.rank})")
        return self


register_section("koopman_learner", KoopmanLearnerConfig, service="koopman_learner")
