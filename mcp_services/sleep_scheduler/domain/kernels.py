"""Compiled per-row kernels of the sleep epoch and of settling (numba), behind typed wrappers.

Why per row: a replay or a cue only ever touches its active concepts and their graph neighbours,
so each row is worked on by walking the CSR rows of its actives with stamp-marked scratch arrays
of length N (reset by bumping a stamp, never by clearing). A batch then costs the sum over rows
of (actives x degree), in proportion to the prototypes and the edges they touch, with no
per-batch union of touched sets: the earlier numpy version built one dense block per chunk of
rows, whose cost and whose pseudo-likelihood terms both grew with the chunk (see
:mod:`.wake_sleep`).

Randomness comes from numba's own generator, seeded from the caller's ``numpy`` Generator at
every call (:func:`seed_from`), so results are reproducible for a given seed.

Kernels compile lazily on first use (a few seconds) and are cached on disk where numba finds a
writable place; where none is writable (a read-only install) each process compiles once, as in
the pruner's kernels. ``fastmath`` is not used: the tie rule of T = 0 settling compares fields
with exactly zero.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@numba.njit(nogil=True)
def _seed(seed: int) -> None:
    np.random.seed(seed)


def seed_from(rng: np.random.Generator) -> None:
    """Seed numba's generator (used by every kernel here) from ``rng``."""
    _seed(int(rng.integers(0, 2**31 - 1)))


@numba.njit(nogil=True, inline="always")
def _sigmoid(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return ez / (1.0 + ez)


@numba.njit(nogil=True)
def _corrupt_row(
    active: IntArray,
    k: int,
    pool: IntArray,
    mark: IntArray,
    stamp: int,
    out: IntArray,
) -> int:
    """Write ``active`` with ``k`` members swapped for pool concepts outside it into ``out``.

    ``active`` must lie within ``pool`` and ``mark`` hold ``stamp`` exactly at its positions;
    returns the row's length (shorter than ``active`` only when the pool has too few others).
    """
    m = active.shape[0]
    for i in range(m):
        out[i] = active[i]
    # Partial Fisher-Yates: the last k slots hold the members to drop.
    for i in range(k):
        j = np.random.randint(0, m - i)
        t = out[j]
        out[j] = out[m - 1 - i]
        out[m - 1 - i] = t
    keep = m - k
    n_new = 0
    if pool.shape[0] - m <= k:
        # Too few concepts outside the row (``active`` is within the pool): take them all.
        for i in range(pool.shape[0]):
            u = pool[i]
            if mark[u] != stamp:
                out[keep + n_new] = u
                n_new += 1
        return int(keep + n_new)
    # Rejection sampling: the row is small next to the pool, so a few draws suffice. Picked
    # concepts are stamped -stamp so they are drawn once and are not mistaken for members.
    while n_new < k:
        u = pool[np.random.randint(0, pool.shape[0])]
        if mark[u] != stamp and mark[u] != -stamp:
            mark[u] = -stamp
            out[keep + n_new] = u
            n_new += 1
    return int(keep + n_new)


@numba.njit(nogil=True, inline="always")
def _touch(
    u: int, stamp: int, seen: IntArray, h: FloatArray, b: FloatArray, ls: IntArray, nt: int
) -> int:
    """Bring ``u`` into this row's touched list (its field starting at its bias); returns nt."""
    if seen[u] != stamp:
        seen[u] = stamp
        h[u] = b[u]
        ls[nt] = u
        return nt + 1
    return nt


@numba.njit(nogil=True, inline="always")
def _spread(
    j: int,
    sign: float,
    indptr: IntArray,
    indices: IntArray,
    data: FloatArray,
    stamp: int,
    seen_at: IntArray,
    h: FloatArray,
    bias: FloatArray,
    touched: IntArray,
    nt: int,
) -> int:
    """Add ``sign`` times row ``j`` of the weights to the fields, touching its neighbours."""
    for p in range(indptr[j], indptr[j + 1]):
        u = indices[p]
        nt = _touch(u, stamp, seen_at, h, bias, touched, nt)
        h[u] += sign * data[p]
    return nt


@numba.njit(nogil=True)
def _epoch(
    s_indptr: IntArray,
    s_indices: IntArray,
    s_w: FloatArray,
    bias: FloatArray,
    scales: FloatArray,
    x_indptr: IntArray,
    x_indices: IntArray,
    swaps: IntArray,
    pool: IntArray,
    rw: FloatArray,
    positive: IntArray,
    inv_t: float,
    error_floor: float,
    stray_floor: float,
    grad: FloatArray,
    esum: FloatArray,
    grad_weight: FloatArray,
    unit_weight: FloatArray,
) -> tuple[float, float]:
    n = bias.shape[0]
    in_x = np.zeros(n, dtype=np.int64)  # stamp: member of the prototype
    in_c = np.zeros(n, dtype=np.int64)  # stamp: active in the replay (-stamp: swapped in)
    seen_at = np.zeros(n, dtype=np.int64)  # stamp: touched by this replay
    h = np.zeros(n)
    err = np.zeros(n)
    touched = np.empty(n, dtype=np.int64)
    cbuf = np.empty(n, dtype=np.int64)
    stray_logit = math.log(stray_floor / (1.0 - stray_floor))
    wrong = 0.0
    seen = 0.0
    for r in range(x_indptr.shape[0] - 1):
        stamp = r + 1
        xi = x_indices[x_indptr[r] : x_indptr[r + 1]]
        for i in range(xi.shape[0]):
            in_c[xi[i]] = stamp
            in_x[xi[i]] = stamp
        m = _corrupt_row(xi, swaps[r], pool, in_c, stamp, cbuf)
        # in_c held stamp on every member and -stamp on the swapped-in ones: make it the replay.
        for i in range(xi.shape[0]):
            in_c[xi[i]] = 0
        for i in range(m):
            in_c[cbuf[i]] = stamp
        nt = 0
        for i in range(xi.shape[0]):
            nt = _touch(xi[i], stamp, seen_at, h, bias, touched, nt)
        for i in range(positive.shape[0]):
            nt = _touch(positive[i], stamp, seen_at, h, bias, touched, nt)
        for a in range(m):
            nt = _touch(cbuf[a], stamp, seen_at, h, bias, touched, nt)
            nt = _spread(
                cbuf[a], 1.0, s_indptr, s_indices, s_w, stamp, seen_at, h, bias, touched, nt
            )
        w_r = rw[r]
        for t in range(nt):
            u = touched[t]
            own = in_x[u] == stamp or in_c[u] == stamp
            z = h[u] * inv_t / scales[u]
            target = 1.0 if in_x[u] == stamp else 0.0
            seen += 1.0
            unit_weight[u] += w_r
            if not own and z < stray_logit:
                # A stray clearly off: its error is under the stray floor, skip the exp.
                err[u] = 0.0
                continue
            e = target - _sigmoid(z)
            if abs(e) > 0.5:
                wrong += 1.0
            floor = error_floor if own else stray_floor
            if abs(e) < floor:
                e = 0.0
            e *= w_r
            err[u] = e
            esum[u] += e
        for a in range(m):
            j = cbuf[a]
            for p in range(s_indptr[j], s_indptr[j + 1]):
                grad[p] += err[s_indices[p]]
                grad_weight[p] += w_r
    return wrong, seen


def epoch_statistics(
    support: tuple[IntArray, IntArray, FloatArray],
    bias: FloatArray,
    scales: FloatArray,
    replays: tuple[IntArray, IntArray, IntArray, FloatArray],
    pool: IntArray,
    temperature: float,
    floors: tuple[float, float],
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """One pass of corrupted replays over the support ``S`` (CSR, symmetric pattern, no diagonal).

    ``support`` is S's ``(indptr, indices, weights on S)``; ``replays`` the prototypes'
    ``(indptr, indices)`` with each row's swap count and weight; ``floors`` the error floors for
    a concept of the replay and for a stray. For replay ``r`` every concept it touches (its
    prototype, its replay, their S-neighbours and the positive-bias concepts) gets the error
    ``e = xi - sigmoid(h / (T scale))`` of its field given the replay, floored as
    :mod:`.wake_sleep` says and weighted by the replay's weight.

    Returns ``grad`` aligned with S's indices (entry ``(j, i)`` summing ``e_i`` over replays
    with ``j`` active: the transpose of ``e c^T``), ``esum`` (N,) the summed errors, the replay
    weight behind each of them (``grad_weight`` per S entry, ``unit_weight`` per concept: the
    weight of the replays that touched it), and the share of touched (replay, concept) pairs
    whose response was on the wrong side of 1/2.
    """
    s_indptr, s_indices, s_w = support
    x_indptr, x_indices, swaps, rw = replays
    grad = np.zeros(s_indices.shape[0])
    esum = np.zeros(bias.shape[0])
    grad_weight = np.zeros(s_indices.shape[0])
    unit_weight = np.zeros(bias.shape[0])
    wrong, seen = _epoch(
        s_indptr,
        s_indices,
        s_w,
        bias,
        scales,
        x_indptr,
        x_indices,
        swaps,
        pool,
        rw,
        np.flatnonzero(bias > 0).astype(np.int64),
        1.0 / temperature,
        floors[0],
        floors[1],
        grad,
        esum,
        grad_weight,
        unit_weight,
    )
    return grad, esum, grad_weight, unit_weight, wrong / max(seen, 1.0)


@numba.njit(nogil=True)
def _apply(
    indptr: IntArray,
    indices: IntArray,
    transpose: IntArray,
    grad: FloatArray,
    grad_weight: FloatArray,
    esum: FloatArray,
    unit_weight: FloatArray,
    mu: FloatArray,
    eta: float,
    w: FloatArray,
    b: FloatArray,
) -> None:
    n = b.shape[0]
    d_w = np.zeros(indices.shape[0])
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            q = transpose[p]
            if grad_weight[q] > 0.0:
                d_w[p] = (grad[q] - esum[i] * mu[indices[p]]) / grad_weight[q]
    for i in range(n):
        sym_mu = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            d = 0.5 * (d_w[p] + d_w[transpose[p]])
            w[p] += eta * d
            sym_mu += d * mu[indices[p]]
        centred = esum[i] / unit_weight[i] if unit_weight[i] > 0.0 else 0.0
        b[i] += eta * (centred - sym_mu)


def apply_update(
    support: tuple[IntArray, IntArray, IntArray],
    statistics: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
    mu: FloatArray,
    eta: float,
    w: FloatArray,
    b: FloatArray,
) -> None:
    """``W += eta dW``, ``b += eta db`` in place from :func:`epoch_statistics`' output.

    ``support`` is S's ``(indptr, indices, transpose)`` (``transpose[p]`` = position of the
    mirror entry); ``statistics`` is ``(grad, esum, grad_weight, unit_weight)``. Entry (i, j)
    of ``dW`` is the mean over the replays behind it of ``e_i (c_j - mu_j)`` (``grad`` holds the
    transpose), symmetrised; ``db = esum / unit_weight - sym(dW) mu`` (centred to plain bias).
    """
    indptr, indices, transpose = support
    grad, esum, grad_weight, unit_weight = statistics
    _apply(indptr, indices, transpose, grad, grad_weight, esum, unit_weight, mu, eta, w, b)


@numba.njit(nogil=True)
def _row_sq(indptr: IntArray, w: FloatArray) -> FloatArray:
    out = np.zeros(indptr.shape[0] - 1)
    for i in range(out.shape[0]):
        for p in range(indptr[i], indptr[i + 1]):
            out[i] += w[p] * w[p]
    return out


def row_sq(indptr: IntArray, w: FloatArray) -> FloatArray:
    """Sum of squared weights of each CSR row."""
    out: FloatArray = _row_sq(indptr, w)
    return out


@numba.njit(nogil=True)
def _settle(
    w_indptr: IntArray,
    w_indices: IntArray,
    w_data: FloatArray,
    bias: FloatArray,
    scales: FloatArray,
    s_indptr: IntArray,
    s_indices: IntArray,
    positive: IntArray,
    t0: float,
    decay: float,
    t_floor: float,
    max_sweeps: int,
) -> tuple[IntArray, IntArray, int, bool]:
    n = bias.shape[0]
    rows = s_indptr.shape[0] - 1
    seen_at = np.zeros(n, dtype=np.int64)
    state = np.zeros(n, dtype=np.int8)
    h = np.zeros(n)
    touched = np.empty(n, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    out_ptr = np.zeros(rows + 1, dtype=np.int64)
    out = np.empty(max(16, 2 * s_indices.shape[0]), dtype=np.int64)
    most = 0
    all_settled = True
    for r in range(rows):
        stamp = r + 1
        nt = 0
        # ``state`` is all zero between rows (reset below), so touching needs no reset of it.
        for q in range(s_indptr[r], s_indptr[r + 1]):
            nt = _touch(s_indices[q], stamp, seen_at, h, bias, touched, nt)
            state[s_indices[q]] = 1
        for i in range(positive.shape[0]):
            nt = _touch(positive[i], stamp, seen_at, h, bias, touched, nt)
        for q in range(s_indptr[r], s_indptr[r + 1]):
            j = s_indices[q]
            nt = _spread(j, 1.0, w_indptr, w_indices, w_data, stamp, seen_at, h, bias, touched, nt)
        t = t0
        settled = False
        sweeps = 0
        for sweep in range(1, max_sweeps + 1):
            sweeps = sweep
            hot = t >= t_floor
            changed = False
            count = nt  # concepts reached during this sweep are visited from the next one
            for i in range(count):
                order[i] = touched[i]
            for i in range(count - 1, 0, -1):
                j = np.random.randint(0, i + 1)
                tmp = order[i]
                order[i] = order[j]
                order[j] = tmp
            for i in range(count):
                u = order[i]
                old = state[u]
                if hot:
                    new = 1 if np.random.random() < _sigmoid(h[u] / (t * scales[u])) else 0
                elif h[u] > 0.0:
                    new = 1
                elif h[u] < 0.0:
                    new = 0
                else:
                    new = old
                if new != old:
                    changed = True
                    state[u] = new
                    sign = 1.0 if new == 1 else -1.0
                    nt = _spread(
                        u, sign, w_indptr, w_indices, w_data, stamp, seen_at, h, bias, touched, nt
                    )
            if not hot and not changed:
                settled = True
                break
            t = t * decay if hot else 0.0
        most = max(most, sweeps)
        all_settled = all_settled and settled
        k = 0
        for i in range(nt):
            if state[touched[i]] == 1:
                k += 1
        start = out_ptr[r]
        if start + k > out.shape[0]:
            grown = np.empty(max(2 * out.shape[0], start + k), dtype=np.int64)
            grown[:start] = out[:start]
            out = grown
        k = 0
        for i in range(nt):
            u = touched[i]
            if state[u] == 1:
                out[start + k] = u
                k += 1
            state[u] = 0
        out[start : start + k].sort()
        out_ptr[r + 1] = start + k
    return out_ptr, out[: out_ptr[rows]].copy(), most, all_settled


def settle_rows(
    weights: sp.csr_matrix,
    bias: FloatArray,
    scales: FloatArray,
    states: sp.csr_matrix,
    schedule: tuple[float, float, float, int],
) -> tuple[IntArray, IntArray, int, bool]:
    """Anneal each row of ``states`` with sequential Glauber updates; see :mod:`.anneal`.

    ``weights`` and ``states`` are CSR with sorted indices; ``schedule`` is
    ``(t0, decay, t_floor, max_sweeps)``. Returns the settled rows as (indptr, sorted indices),
    the most sweeps any row ran and whether every row settled within ``max_sweeps``.
    """
    t0, decay, t_floor, max_sweeps = schedule
    indptr, indices, most, settled = _settle(
        weights.indptr.astype(np.int64),
        weights.indices.astype(np.int64),
        np.asarray(weights.data, dtype=np.float64),
        np.asarray(bias, dtype=np.float64),
        np.asarray(scales, dtype=np.float64),
        states.indptr.astype(np.int64),
        states.indices.astype(np.int64),
        np.flatnonzero(bias > 0).astype(np.int64),
        float(t0),
        float(decay),
        float(t_floor),
        int(max_sweeps),
    )
    return indptr, indices, int(most), bool(settled)


def _enable_disk_cache() -> None:
    # numba's own cache=True raises at import when no cache location is writable; asking after
    # definition lets the module import there and compile per process instead.
    for dispatcher in (
        _seed,
        _sigmoid,
        _touch,
        _spread,
        _corrupt_row,
        _epoch,
        _apply,
        _row_sq,
        _settle,
    ):
        try:
            dispatcher.enable_caching()
        except RuntimeError:
            return


_enable_disk_cache()
