"""Concept activations and the binary states the energy model runs on.

State convention (used by every module of this package): a concept's state is ``s_i in {0, 1}``,
1 when the concept is active. An activation maps to a state by ``s_i = 1`` iff its strength is
``> ACTIVE_THRESHOLD`` (0.5, the data model's rule); concepts absent from the activation are 0.

Why {0, 1} rather than ±1: with ±1 every absent concept is -1, so the outer products of the
learning rule touch every pair of concepts and the graph turns dense. With {0, 1} the products
only touch pairs of concepts that are active together, so a cycle costs in proportion to the
episodes and the edges they touch. The two models are the same family (``s = (1 + sigma) / 2``
maps a ±1 network with couplings J and no bias to ``W = 2 J``, ``b = -J 1``), so a ±1 pattern
``xi`` is presented as the activation with strength 1.0 on the concepts where ``xi = +1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.concept_index import ConceptIndex

ACTIVE_THRESHOLD = 0.5
"""A concept with strength strictly above this counts as active (data model, DESIGN section 2)."""


@dataclass(frozen=True)
class ConceptActivation:
    """One moment of concept activity: parallel tuples of concept ids and strengths.

    Args:
        concept_ids: concept ids, unique within the activation.
        strengths: finite strengths in [0, 1], one per id.

    Raises:
        ValueError: if the lengths differ, an id repeats, or a strength is outside [0, 1].
    """

    concept_ids: tuple[str, ...]
    strengths: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.concept_ids) != len(self.strengths):
            raise ValueError(
                f"concept_ids has {len(self.concept_ids)} entries but strengths has "
                f"{len(self.strengths)}: pass one strength per concept id"
            )
        if len(set(self.concept_ids)) != len(self.concept_ids):
            raise ValueError("concept_ids repeats an id: list each concept once per activation")
        for concept_id, strength in zip(self.concept_ids, self.strengths, strict=True):
            if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
                raise ValueError(
                    f"strengths[{concept_id!r}]={strength} is outside [0, 1]: clip it first"
                )

    @classmethod
    def of_active(cls, concept_ids: Sequence[str]) -> ConceptActivation:
        """An activation with strength 1.0 on each of ``concept_ids``."""
        return cls(tuple(concept_ids), (1.0,) * len(concept_ids))

    def active_ids(self) -> tuple[str, ...]:
        """The ids whose strength is above :data:`ACTIVE_THRESHOLD`, in input order."""
        return tuple(
            c for c, s in zip(self.concept_ids, self.strengths, strict=True) if s > ACTIVE_THRESHOLD
        )


def index_for(activations: Sequence[ConceptActivation], index: ConceptIndex) -> ConceptIndex:
    """``index`` extended by every concept that is active in one of ``activations``."""
    return index.extended(c for a in activations for c in a.active_ids())


def states_matrix(activations: Sequence[ConceptActivation], index: ConceptIndex) -> sp.csr_matrix:
    """Binary states of ``activations`` as a CSR matrix of shape (len(activations), index.size).

    Active concepts the index does not know are dropped (extend the index first with
    :func:`index_for` when they should count). Values are 1.0 (float64).
    """
    indptr = [0]
    cols: list[NDArray[np.int64]] = []
    for activation in activations:
        pos, _ = index.known_positions(activation.active_ids())
        cols.append(np.sort(pos))
        indptr.append(indptr[-1] + len(pos))
    indices = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    data = np.ones(len(indices), dtype=np.float64)
    return sp.csr_matrix((data, indices, np.asarray(indptr)), shape=(len(activations), index.size))


def activation_of_state(
    state: NDArray[np.floating] | sp.csr_matrix, index: ConceptIndex
) -> ConceptActivation:
    """The activation (strength 1.0 per active concept) of one binary state row over ``index``."""
    row = state.toarray().ravel() if sp.issparse(state) else np.asarray(state).ravel()
    if row.shape[0] != index.size:
        raise ValueError(
            f"state has {row.shape[0]} entries but the index has {index.size}: "
            "pass a state over the same index"
        )
    return ConceptActivation.of_active([index.ids[i] for i in np.flatnonzero(row > 0.5)])


def pm1_to_states(patterns: NDArray[np.integer] | NDArray[np.floating]) -> NDArray[np.float64]:
    """Map ±1 patterns (any shape) to {0, 1} states: +1 -> 1 (active), -1 -> 0 (absent).

    Raises:
        ValueError: if an entry is not -1 or +1.
    """
    arr = np.asarray(patterns)
    if not np.all(np.abs(arr) == 1):
        raise ValueError("patterns must hold only -1 and +1: map other values before calling")
    return (arr > 0).astype(np.float64)


def states_to_pm1(states: NDArray[np.floating]) -> NDArray[np.int8]:
    """Map {0, 1} states (dense, any shape) to ±1 patterns: active -> +1, inactive -> -1."""
    return np.where(np.asarray(states) > 0.5, 1, -1).astype(np.int8)
