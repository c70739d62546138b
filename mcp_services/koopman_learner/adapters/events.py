"""The events the learner publishes on the bus: `tori.memory.kcl.modes.updated` when the default
stream's served model changes, `tori.memory.kcl.couplings.updated` after an accepted couplings
update."""

from __future__ import annotations

from mcp_services.common.event_bus import (
    KCL_COUPLINGS_UPDATED,
    KCL_MODES_UPDATED,
    EventBus,
    new_header,
)
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.koopman_learner.domain import CouplingEstimate
from mcp_services.koopman_learner.domain.learner import View

SOURCE = "koopman-learner"


class LearnerEvents:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def modes_updated(self, view: View) -> None:
        """A new model is served (`view.model` is set)."""
        assert view.model is not None
        self._bus.publish(
            KCL_MODES_UPDATED,
            events_pb2.ModesUpdated(
                header=new_header(SOURCE),
                mode_count=view.model.rank,
                rank=view.rank_in_force,
                psi_drift=view.psi_drift,
            ),
        )

    def couplings_updated(self, estimate: CouplingEstimate) -> None:
        self._bus.publish(
            KCL_COUPLINGS_UPDATED,
            events_pb2.CouplingsUpdated(
                header=new_header(SOURCE),
                coupling_count=int((estimate.couplings > 0).sum()),
                oscillator_count=len(estimate.concept_ids),
            ),
        )
