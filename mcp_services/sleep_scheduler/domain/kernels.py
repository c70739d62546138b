"""Compiled per-row kernels of the sleep epoch and of settling (numba), behind typed wrappers.

Why per row: a replay or a cue only ever touches its active concepts and their graph neighbours,
so each row is worked on by walking the CSR rows of its actives with stamp-marked scratch arrays
of length N (reset by bumping a stamp, never by clearing). A batch then costs the sum over rows
of (actives x degree), in proportion to the prototypes and the edges they touch, with no
per-batch union of touched sets: the earlier numpy version built one dense block per chunk of
rows, whose cost and whose pseudo-likelihood terms both grew with the chunk (see
:mod:`.wake_sleep`). When a replay's rows hold a good share of N entries (many prototypes over
few concepts: at 100k episodes over 10k concepts each replay reaches ~78% of them), testing each
entry for "touched yet" costs more than resetting all N fields and marking without a test
(:func:`_fields_dense`); both ways give the same fields bit for bit.

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
Indices = NDArray[np.int32] | NDArray[np.int64]
"""Column indices of a CSR pattern: int32 (scipy's own, half the bytes to stream) or int64."""
FloatArray = NDArray[np.float64]

DENSE_FROM = 0.25
"""Share of N from which a replay's rows (the summed degrees of its concepts) are walked without
a touched test per entry (:func:`_fields_dense`): measured break-even about N/4 (at 20 actives
over 10k concepts, rows of 74 entries each are faster with the test, of 720 without)."""


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
    indices: Indices,
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
def _fields_dense(
    xi: IntArray,
    c: IntArray,
    positive: IntArray,
    indptr: IntArray,
    indices: Indices,
    data: FloatArray,
    stamp: int,
    seen_at: IntArray,
    h: FloatArray,
    bias: FloatArray,
) -> None:
    """The fields and touched marks of one replay whose rows reach much of the graph.

    The same fields as touching concept by concept (each starts at its bias and adds the rows
    of ``c`` in the same order), without a test per entry: every field is reset to its bias
    first, which costs N and pays when the rows' entries are a good share of N.
    """
    h[:] = bias
    for i in range(xi.shape[0]):
        seen_at[xi[i]] = stamp
    for i in range(positive.shape[0]):
        seen_at[positive[i]] = stamp
    for a in range(c.shape[0]):
        j = c[a]
        seen_at[j] = stamp
        for p in range(indptr[j], indptr[j + 1]):
            u = indices[p]
            h[u] += data[p]
            seen_at[u] = stamp


@numba.njit(nogil=True)
def _list_touched(stamp: int, seen_at: IntArray, touched: IntArray) -> int:
    """Write the concepts marked ``stamp`` into ``touched`` (increasing order); returns count."""
    nt = 0
    for u in range(seen_at.shape[0]):
        touched[nt] = u
        nt += int(seen_at[u] == stamp)
    return nt


@numba.njit(nogil=True)
def _epoch(
    s_indptr: IntArray,
    s_indices: Indices,
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
    dense_from: float,
    grad: FloatArray,
    esum: FloatArray,
    row_weight: FloatArray,
    unit_weight: FloatArray,
) -> tuple[float, float]:
    n = bias.shape[0]
    in_x = np.zeros(n, dtype=np.int64)  # stamp: member of the prototype
    in_c = np.zeros(n, dtype=np.int64)  # stamp: active in the replay (-stamp: swapped in)
    seen_at = np.zeros(n, dtype=np.int64)  # stamp: touched by this replay
    h = np.zeros(n)
    err = np.zeros(n)
    touched = np.empty(n + 1, dtype=np.int64)  # one spare slot for _list_touched's last write
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
        reach = 0
        for a in range(m):
            reach += s_indptr[cbuf[a] + 1] - s_indptr[cbuf[a]]
        if reach >= dense_from * n:
            # Rows reaching a good share of the graph: reset every field, skip the per-entry test.
            _fields_dense(xi, cbuf[:m], positive, s_indptr, s_indices, s_w, stamp, seen_at, h, bias)
            nt = _list_touched(stamp, seen_at, touched)
        else:
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
        seen += nt  # exact: a count far below 2**53
        for t in range(nt):
            u = touched[t]
            own = in_x[u] == stamp or in_c[u] == stamp
            z = h[u] * inv_t / scales[u]
            target = 1.0 if in_x[u] == stamp else 0.0
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
            # Every entry of row j gets this replay's weight: kept once per row, not per entry.
            row_weight[j] += w_r
            for p in range(s_indptr[j], s_indptr[j + 1]):
                grad[p] += err[s_indices[p]]
    return wrong, seen


def epoch_statistics(
    support: tuple[IntArray, Indices, FloatArray],
    bias: FloatArray,
    scales: FloatArray,
    replays: tuple[IntArray, IntArray, IntArray, FloatArray],
    pool: IntArray,
    temperature: float,
    floors: tuple[float, float],
    dense_from: float = DENSE_FROM,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """One pass of corrupted replays over the support ``S`` (CSR, symmetric pattern, no diagonal).

    ``support`` is S's ``(indptr, indices, weights on S)``; ``replays`` the prototypes'
    ``(indptr, indices)`` with each row's swap count and weight; ``floors`` the error floors for
    a concept of the replay and for a stray. For replay ``r`` every concept it touches (its
    prototype, its replay, their S-neighbours and the positive-bias concepts) gets the error
    ``e = xi - sigmoid(h / (T scale))`` of its field given the replay, floored as
    :mod:`.wake_sleep` says and weighted by the replay's weight. A replay whose rows of S hold
    ``dense_from * N`` entries or more has its fields made by :func:`_fields_dense`; the
    figures are the same either way, bit for bit.

    Returns ``grad`` aligned with S's indices (entry ``(j, i)`` summing ``e_i`` over replays
    with ``j`` active: the transpose of ``e c^T``), ``esum`` (N,) the summed errors, the replay
    weight behind each of them (``row_weight`` per concept j: the weight of the replays with j
    active, behind every entry of S's row j; ``unit_weight`` per concept: the weight of the
    replays that touched it), and the share of touched (replay, concept) pairs whose response
    was on the wrong side of 1/2.
    """
    s_indptr, s_indices, s_w = support
    x_indptr, x_indices, swaps, rw = replays
    grad = np.zeros(s_indices.shape[0])
    esum = np.zeros(bias.shape[0])
    row_weight = np.zeros(bias.shape[0])
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
        dense_from,
        grad,
        esum,
        row_weight,
        unit_weight,
    )
    return grad, esum, row_weight, unit_weight, wrong / max(seen, 1.0)


@numba.njit(nogil=True)
def _apply(
    indptr: IntArray,
    indices: Indices,
    transpose: IntArray,
    grad: FloatArray,
    row_weight: FloatArray,
    esum: FloatArray,
    unit_weight: FloatArray,
    mu: FloatArray,
    eta: float,
    w: FloatArray,
    b: FloatArray,
) -> None:
    n = b.shape[0]
    for i in range(n):
        sym_mu = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            q = transpose[p]
            # Entry (i, j) of dW: e_i over the replays with j active, whose sum grad holds at
            # (j, i), i.e. at q; its mirror (j, i) reads grad at p. Both halves are made here,
            # so each entry reads the far half of grad once.
            mine = (grad[q] - esum[i] * mu[j]) / row_weight[j] if row_weight[j] > 0.0 else 0.0
            theirs = (grad[p] - esum[j] * mu[i]) / row_weight[i] if row_weight[i] > 0.0 else 0.0
            d = 0.5 * (mine + theirs)
            w[p] += eta * d
            sym_mu += d * mu[j]
        centred = esum[i] / unit_weight[i] if unit_weight[i] > 0.0 else 0.0
        b[i] += eta * (centred - sym_mu)


def apply_update(
    support: tuple[IntArray, Indices, IntArray],
    statistics: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
    mu: FloatArray,
    eta: float,
    w: FloatArray,
    b: FloatArray,
) -> None:
    """``W += eta dW``, ``b += eta db`` in place from :func:`epoch_statistics`' output.

    ``support`` is S's ``(indptr, indices, transpose)`` (``transpose[p]`` = position of the
    mirror entry); ``statistics`` is ``(grad, esum, row_weight, unit_weight)``. Entry (i, j)
    of ``dW`` is the mean over the replays behind it of ``e_i (c_j - mu_j)`` (``grad`` holds the
    transpose), symmetrised; ``db = esum / unit_weight - sym(dW) mu`` (centred to plain bias).
    """
    indptr, indices, transpose = support
    grad, esum, row_weight, unit_weight = statistics
    _apply(indptr, indices, transpose, grad, row_weight, esum, unit_weight, mu, eta, w, b)


@numba.njit(nogil=True)
def _transpose_positions(indptr: IntArray, indices: Indices) -> IntArray:
    n = indptr.shape[0] - 1
    nxt = indptr[:-1].copy()
    out = np.empty(indices.shape[0], dtype=np.int64)
    # Rows visited in order: row j meets its entries (j, i) in increasing i, its sorted order.
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            out[p] = nxt[j]
            nxt[j] += 1
    return out


def transpose_positions(indptr: IntArray, indices: Indices) -> IntArray:
    """``t[p]`` = position of the mirror entry of entry ``p`` of a CSR pattern.

    The pattern must be symmetric with sorted indices in every row; costs O(nnz).
    """
    out: IntArray = _transpose_positions(indptr, indices)
    return out


@numba.njit(nogil=True)
def _on_support(
    indptr: IntArray,
    indices: Indices,
    w_indptr: IntArray,
    w_indices: Indices,
    w_data: FloatArray,
) -> FloatArray:
    out = np.zeros(indices.shape[0])
    for i in range(indptr.shape[0] - 1):
        p = indptr[i]
        for q in range(w_indptr[i], w_indptr[i + 1]):
            if w_data[q] == 0.0:
                continue  # a stored zero (e.g. on the diagonal) need not be on the pattern
            while indices[p] != w_indices[q]:
                p += 1
            out[p] = w_data[q]
    return out


def on_support(indptr: IntArray, indices: Indices, weights: sp.csr_matrix) -> FloatArray:
    """``weights``' values aligned with a CSR pattern (sorted rows) that contains its entries."""
    w = sp.csr_matrix(weights)
    w.sort_indices()
    out: FloatArray = _on_support(
        indptr, indices, w.indptr.astype(np.int64), w.indices, np.asarray(w.data, np.float64)
    )
    return out


@numba.njit(nogil=True)
def _quadratic(
    w_indptr: IntArray,
    w_indices: Indices,
    w_data: FloatArray,
    s_indptr: IntArray,
    s_indices: Indices,
    s_data: FloatArray,
) -> FloatArray:
    n = w_indptr.shape[0] - 1
    rows = s_indptr.shape[0] - 1
    out = np.zeros(rows)
    mark = np.zeros(n, dtype=np.int64)
    value = np.zeros(n)
    for r in range(rows):
        lo, hi = s_indptr[r], s_indptr[r + 1]
        k = hi - lo
        for b in range(lo, hi):
            mark[s_indices[b]] = r + 1
            value[s_indices[b]] = s_data[b]
        total = 0.0
        for a in range(lo, hi):
            j = s_indices[a]
            start, end = w_indptr[j], w_indptr[j + 1]
            acc = 0.0
            if k * (1 + math.log2(end - start + 1)) < end - start:
                # Few actives against a long row: look each of them up in it.
                row = w_indices[start:end]
                for b in range(lo, hi):
                    pos = start + np.searchsorted(row, s_indices[b])
                    if pos < end and w_indices[pos] == s_indices[b]:
                        acc += w_data[pos] * s_data[b]
            else:
                for p in range(start, end):
                    if mark[w_indices[p]] == r + 1:
                        acc += w_data[p] * value[w_indices[p]]
            total += s_data[a] * acc
        out[r] = total
    return out


def quadratic_forms(weights: sp.csr_matrix, states: sp.csr_matrix) -> FloatArray:
    """``s^T W s`` of each row ``s`` of ``states`` (CSR, no duplicate entries).

    Costs per row, for each active concept, the lesser of its row of W and the row's actives
    times a binary search in it; nothing of size rows x N is built.
    """
    w = weights if weights.has_sorted_indices else weights.sorted_indices()
    out: FloatArray = _quadratic(
        w.indptr.astype(np.int64),
        w.indices,
        np.asarray(w.data, dtype=np.float64),
        states.indptr.astype(np.int64),
        states.indices,
        np.asarray(states.data, dtype=np.float64),
    )
    return out


@numba.njit(nogil=True)
def _loo_phi(
    indptr: IntArray,
    indices: Indices,
    data: FloatArray,
    w: FloatArray,
    rows: IntArray,
    starts: IntArray,
    n: int,
) -> FloatArray:
    out = np.full(rows.shape[0], np.inf)
    votes = np.zeros(n)
    in_group = np.zeros(n, dtype=np.int64)
    value = np.zeros(n)  # the member's own value on each concept (0 off its row)
    cols = np.empty(n, dtype=np.int64)
    for g in range(starts.shape[0] - 1):
        a, b = starts[g], starts[g + 1]
        if b - a < 2:
            continue
        nc = 0
        mass = 0.0
        for t in range(a, b):
            i = rows[t]
            mass += w[i]
            for p in range(indptr[i], indptr[i + 1]):
                k = indices[p]
                if in_group[k] != g + 1:
                    in_group[k] = g + 1
                    votes[k] = 0.0
                    cols[nc] = k
                    nc += 1
                votes[k] += w[i] * data[p]
        for t in range(a, b):
            i = rows[t]
            wi = w[i]
            half = 0.5 * (mass - wi)
            na = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                value[indices[p]] = data[p]
                na += data[p]
            nb = 0.0
            n11 = 0.0
            for q in range(nc):
                k = cols[q]
                if votes[k] - wi * value[k] > half:
                    nb += 1.0
                    n11 += value[k]
            for p in range(indptr[i], indptr[i + 1]):
                value[indices[p]] = 0.0
            denom = math.sqrt(na * (n - na) * nb * (n - nb))
            out[t] = (n * n11 - na * nb) / denom if denom > 0 else 0.0
    return out


def leave_one_out_phi(
    x: sp.csr_matrix, w: FloatArray, rows: IntArray, groups: IntArray, n: int
) -> FloatArray:
    """Phi of each of ``rows`` of ``x`` with the weighted majority vote of its group without it.

    ``rows`` are sorted by ``groups`` (their group labels); a concept is on in the vote of the
    others when their weight on it exceeds half their weight. Rows alone in their group get
    inf. Costs each group's members times the concepts the group uses.
    """
    starts = np.concatenate(([0], np.flatnonzero(np.diff(groups)) + 1, [len(rows)]))
    out: FloatArray = _loo_phi(
        x.indptr.astype(np.int64),
        x.indices,
        np.asarray(x.data, dtype=np.float64),
        np.asarray(w, dtype=np.float64),
        rows.astype(np.int64),
        starts.astype(np.int64),
        int(n),
    )
    return out


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
    w_indices: Indices,
    w_data: FloatArray,
    bias: FloatArray,
    scales: FloatArray,
    s_indptr: IntArray,
    s_indices: Indices,
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
        weights.indices,
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
        _fields_dense,
        _list_touched,
        _epoch,
        _apply,
        _transpose_positions,
        _on_support,
        _quadratic,
        _loo_phi,
        _row_sq,
        _settle,
    ):
        try:
            dispatcher.enable_caching()
        except RuntimeError:
            return


_enable_disk_cache()
