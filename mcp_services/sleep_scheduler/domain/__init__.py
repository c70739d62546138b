"""SleepScheduler domain: the concept graph as an energy model and its consolidation by replay.

Pure numerics (numpy / scipy), no gRPC, no Redis. What the servicer calls:

* :class:`ConceptIndex`, :class:`ConceptActivation`, :class:`ConceptGraph` — the data;
* :func:`consolidate` (and :func:`consolidate_states`) — one consolidation cycle;
* :func:`complete` — settle a cue into its attractor (the vault's Recall);
* :func:`advise` — the operators' tuning rules as a pure function.
"""

from mcp_services.sleep_scheduler.domain.activations import (
    ACTIVE_THRESHOLD,
    ConceptActivation,
    states_matrix,
)
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, SettleResult, settle
from mcp_services.sleep_scheduler.domain.concept_index import ConceptIndex
from mcp_services.sleep_scheduler.domain.consolidation import (
    ConsolidationConfig,
    ConsolidationResult,
    CycleStats,
    StatesResult,
    consolidate,
    consolidate_states,
)
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph
from mcp_services.sleep_scheduler.domain.quality import RecallReport

__all__ = [
    "ACTIVE_THRESHOLD",
    "AnnealSchedule",
    "ConceptActivation",
    "ConceptGraph",
    "ConceptIndex",
    "ConsolidationConfig",
    "ConsolidationResult",
    "CycleStats",
    "RecallReport",
    "SettleResult",
    "StatesResult",
    "consolidate",
    "consolidate_states",
    "settle",
    "states_matrix",
]
