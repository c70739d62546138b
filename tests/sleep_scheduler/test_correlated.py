"""Correlated classes become attractors, at small sizes (issue 14; the full figures are in
bench/bench_correlated.py).

Hierarchical family: 2 random parents, 5 classes each (siblings overlap 0.5-0.8), samples that
swap each member with probability 0.1; image-like family: thick strokes on a 12x12 grid,
deformed and 5% flipped. Learning never sees a label; the labels only score the answers.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.cluster.vq import kmeans2

from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex, consolidate_states
from mcp_services.sleep_scheduler.domain.completion import complete_states
from mcp_services.sleep_scheduler.domain.correlated import (
    PlantedClasses,
    cosine,
    hierarchical,
    image_like,
)
from mcp_services.sleep_scheduler.domain.prototypes import (
    _loo_reassign,
    majority_vote,
    merge_episodes,
    phi_overlap,
)
from mcp_services.sleep_scheduler.domain.split import split_clusters
from mcp_services.sleep_scheduler.domain.wake_sleep import swap_noise


def phi_all(a: sp.csr_matrix, b: sp.csr_matrix, n: int) -> np.ndarray:
    n11 = (a @ b.T).toarray()
    na = np.asarray(a.sum(axis=1)).ravel()[:, None]
    nb = np.asarray(b.sum(axis=1)).ravel()[None, :]
    out: np.ndarray = (n * n11 - na * nb) / np.sqrt(na * (n - na) * nb * (n - nb))
    return out


def cues_of(data: PlantedClasses, per_class: int = 10) -> tuple[sp.csr_matrix, np.ndarray]:
    labels = np.repeat(np.arange(data.classes), per_class)
    n = data.prototypes.shape[1]
    rng = np.random.default_rng(3)
    return swap_noise(data.prototypes[labels], 0.1, np.arange(n), rng), labels


def scores(done: sp.csr_matrix, labels: np.ndarray, data: PlantedClasses) -> tuple[float, float]:
    """Class accuracy (nearest class prototype by phi) and mean phi with the own prototype."""
    n = data.prototypes.shape[1]
    acc = float(np.mean(phi_all(done, data.prototypes, n).argmax(axis=1) == labels))
    return acc, float(np.mean(phi_overlap(done, data.prototypes[labels], n)))


def kmeans_completion(data: PlantedClasses, states: sp.csr_matrix) -> sp.csr_matrix:
    """The unsupervised reference: k-means (k = classes) and the nearest centroid at 1/2."""
    x = data.samples.toarray().astype(np.float64)
    centres, _ = kmeans2(x, data.classes, minit="++", seed=0)
    s = states.toarray()
    d = ((s[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return sp.csr_matrix((centres[d.argmin(axis=1)] > 0.5).astype(np.float64))


HIER = hierarchical(256, 0.3, per_class=20, seed=41)
IMAGES = image_like(12, 0.3, per_class=20, seed=42)


class TestFamilies:
    def test_hierarchical_siblings_overlap_half_to_four_fifths(self) -> None:
        """Classes of one parent overlap (cosine) 0.45-0.85; of different parents near chance."""
        c = cosine(HIER.prototypes, HIER.prototypes)
        sib = [c[i, j] for i in range(10) for j in range(i + 1, 10) if i % 2 == j % 2]
        other = [c[i, j] for i in range(10) for j in range(i + 1, 10) if i % 2 != j % 2]
        assert min(sib) >= 0.45 and max(sib) <= 0.85
        assert max(other) < 0.45


class TestPrototypeFormation:
    def test_correlated_classes_each_get_a_prototype(self) -> None:
        """Between 1x and 1.5x as many prototypes as classes, and every class owns one."""
        for data in (HIER, IMAGES):
            protos = merge_episodes(data.samples)
            n = data.prototypes.shape[1]
            owner = phi_all(protos.states, data.prototypes, n).argmax(axis=1)
            assert data.classes <= protos.count <= 1.5 * data.classes
            assert len(set(owner.tolist())) >= 0.9 * data.classes

    def test_noisy_copies_of_one_class_are_not_split(self) -> None:
        """Forty noisy samples of a single class stay one cluster."""
        one = hierarchical(256, 0.3, classes=1, parents=1, per_class=40, seed=5)
        labels = split_clusters(one.samples, np.zeros(40, dtype=np.int64), np.ones(40))
        assert labels.max() == 0

    def test_two_siblings_in_one_cluster_are_split(self) -> None:
        """Samples of two siblings (cosine ~0.8) lumped together are split along the classes."""
        two = hierarchical(256, 0.3, classes=2, parents=1, per_class=20, swap_range=(0.1, 0.1))
        labels = split_clusters(two.samples, np.zeros(40, dtype=np.int64), np.ones(40))
        assert labels.max() == 1
        for k in (0, 1):
            assert len(set(two.labels[labels == k].tolist())) == 1


class TestCorrelatedCompletion:
    def test_hierarchical_cues_settle_to_their_class(self) -> None:
        """Prototype cues (10% swapped) reach accuracy and overlap >= 0.95, beyond k-means."""
        out = consolidate_states(ConceptGraph.empty(ConceptIndex.of_size(256)), HIER.samples)
        cues, labels = cues_of(HIER)
        done, _, _, _ = complete_states(out.graph, cues, prototypes=out.prototypes.states)
        acc, overlap = scores(done, labels, HIER)
        km_acc, km_overlap = scores(kmeans_completion(HIER, cues), labels, HIER)
        _, before = scores(cues, labels, HIER)
        assert acc >= 0.95 and overlap >= 0.95
        assert acc >= km_acc and overlap >= km_overlap
        assert overlap > before

    def test_image_cues_end_closer_than_they_started(self) -> None:
        """On stroke images completion matches k-means and moves cues toward their class."""
        n = IMAGES.prototypes.shape[1]
        out = consolidate_states(ConceptGraph.empty(ConceptIndex.of_size(n)), IMAGES.samples)
        cues, labels = cues_of(IMAGES)
        done, _, _, _ = complete_states(out.graph, cues, prototypes=out.prototypes.states)
        acc, overlap = scores(done, labels, IMAGES)
        km_acc, km_overlap = scores(kmeans_completion(IMAGES, cues), labels, IMAGES)
        _, before = scores(cues, labels, IMAGES)
        assert acc >= km_acc and overlap >= km_overlap
        assert overlap > before

    def test_held_out_samples_are_not_made_worse(self) -> None:
        """Held-out samples are classified after completion at least as well as before."""
        for data in (HIER, IMAGES):
            n = data.prototypes.shape[1]
            out = consolidate_states(ConceptGraph.empty(ConceptIndex.of_size(n)), data.samples)
            done, _, _, _ = complete_states(
                out.graph, data.held_out, prototypes=out.prototypes.states
            )
            after, _ = scores(done, data.held_out_labels, data)
            before, _ = scores(data.held_out, data.held_out_labels, data)
            assert after >= before


class TestLeaveOneOut:
    @staticmethod
    def copies(base: np.ndarray, count: int, swaps: int, rng: np.random.Generator) -> np.ndarray:
        out = np.repeat(base[None, :], count, axis=0)
        for row in out:
            on, off = np.flatnonzero(row), np.flatnonzero(row == 0)
            row[rng.choice(on, swaps, replace=False)] = 0
            row[rng.choice(off, swaps, replace=False)] = 1
        return out

    def test_a_few_noisy_copies_lose_their_own_prototype(self) -> None:
        """Three copies of a class with 3 of 20 members swapped each, clustered apart from the
        class's 30 copies, rejoin the class; a real sibling of five clean copies keeps its own."""
        rng = np.random.default_rng(4)
        n = 200
        cls = np.zeros(n)
        cls[:20] = 1
        sibling = cls.copy()
        sibling[:6] = 0
        sibling[20:26] = 1
        rows = np.vstack(
            [
                self.copies(cls, 30, 1, rng),
                self.copies(cls, 3, 3, rng),
                self.copies(sibling, 5, 0, rng),
            ]
        )
        labels = np.array([0] * 30 + [1] * 3 + [2] * 5, dtype=np.int64)
        x = sp.csr_matrix(rows)
        w = np.ones(len(labels))
        protos, total = majority_vote(x, labels, w, 3)
        out = _loo_reassign(x, w, labels, protos, total, 0.3, 3.0)
        assert out[:33].tolist() == [0] * 33
        assert out[33:].tolist() == [2] * 5

    def test_every_class_one_prototype_at_fifty_samples(self) -> None:
        """Fifty samples per class at N = 256, activity 0.1: ten prototypes, one per class (a
        stray three-sample prototype formed here before the leave-one-out check)."""
        data = hierarchical(256, 0.1, per_class=50, seed=1306)
        protos = merge_episodes(data.samples)
        owner = phi_all(protos.states, data.prototypes, 256).argmax(axis=1)
        assert protos.count == 10 and sorted(owner.tolist()) == list(range(10))
