"""Prototypes that later episodes do not reinforce fade, and every cycle says what it learned.

A cycle rehearses the prototypes of earlier cycles beside its new episodes so that new memories
do not overwrite old ones. Without an end, whatever a cycle once took for structure would be
replayed for ever: the issue-14 failure where one night of unstructured episodes left prototypes
that every later cycle kept replaying. So each cycle multiplies the weight (episode count) of a
rehearsed prototype that none of its new episodes joined by ``fade``; one that falls below the
support a prototype needs (:data:`.prototypes.DEFAULT_MIN_SUPPORT`) is dropped, and the cycle
says how many in its notes. A prototype seen by many episodes lasts many unreinforced cycles
(at 0.9, 20 episodes last about 18 cycles, 5 episodes about 5); one episodes keep joining never
fades.

The notes name what happened in words an operator can act on (``no_structure``, ``faded``,
``unassigned``); the tuning advice reads them instead of guessing from an energy figure.
"""

from __future__ import annotations

import numpy as np

from mcp_services.sleep_scheduler.domain.prototypes import DEFAULT_MIN_SUPPORT, PrototypeSet

DEFAULT_FADE = 0.9
"""Weight factor per cycle without reinforcement (1.0: prototypes never fade)."""


def fade_unreinforced(
    protos: PrototypeSet,
    new_rows: int,
    fade: float = DEFAULT_FADE,
    min_support: float = DEFAULT_MIN_SUPPORT,
) -> tuple[PrototypeSet, int]:
    """Fade the prototypes no new episode joined; drop those below ``min_support``.

    Args:
        protos: the merge of ``new_rows`` new episodes followed by rehearsed prototypes (rows
            in that order, as :func:`.consolidation.consolidate_states` stacks them).
        new_rows: how many of the rows are new episodes.
        fade: weight factor in [0, 1] for an unreinforced prototype.
        min_support: weight under which a faded prototype is dropped.

    Returns:
        The prototypes kept (assignment remapped; rows of dropped ones get -1) and how many
        were dropped.

    Raises:
        ValueError: if ``fade`` is outside [0, 1].
    """
    if not 0.0 <= fade <= 1.0:
        raise ValueError(f"fade={fade} must be in [0, 1], e.g. 0.9 (1: never fade)")
    k = protos.count
    if k == 0:
        return protos, 0
    new = protos.assignment[:new_rows]
    reinforced = np.zeros(k, dtype=bool)
    reinforced[new[new >= 0]] = True
    weights = np.where(reinforced, protos.weights, protos.weights * fade)
    keep = reinforced | (weights >= min_support)
    dropped = int(k - keep.sum())
    if not dropped:
        return PrototypeSet(protos.states, weights, protos.assignment), 0
    remap = np.full(k, -1, dtype=np.int64)
    remap[keep] = np.arange(int(keep.sum()))
    a = protos.assignment
    assignment = np.where(a >= 0, remap[np.maximum(a, 0)], -1).astype(np.int64)
    kept = protos.states[np.flatnonzero(keep)]
    return PrototypeSet(kept, weights[keep], assignment), dropped


def cycle_notes(protos: PrototypeSet, new_rows: int, faded: int) -> tuple[str, ...]:
    """What a cycle's merge found, as notes ``"<cause>: <what it means>"``."""
    notes: list[str] = []
    new = protos.assignment[:new_rows]
    joined = int(np.count_nonzero(new >= 0))
    if new_rows and not joined:
        notes.append(
            f"no_structure: none of the {new_rows} episodes repeated an assembly (no "
            f"{DEFAULT_MIN_SUPPORT:g} episodes agreeing on 2 or more concepts); nothing to learn "
            "from them, no knob to change"
        )
    elif joined < new_rows:
        notes.append(
            f"unassigned: {new_rows - joined} of {new_rows} episodes joined no prototype "
            "(seen once, like nothing else); they stay in the vault as episodes"
        )
    if faded:
        notes.append(
            f"faded: {faded} rehearsed prototypes no episode reinforced fell below "
            f"{DEFAULT_MIN_SUPPORT:g} episodes of weight and were dropped"
        )
    return tuple(notes)
