"""Selectors on synthetic features: routing, state shapes, seeding, refusal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from continual import (
    ContinualError,
    GaussianSelector,
    KeySelector,
    OracleSelector,
    PrototypeSelector,
    ViewGaussianSelector,
)
from continual.selector import UNKNOWN_TASK, scatter_of, summed_scatter


def gaussian_clusters(count: int = 3, dim: int = 16, per_cluster: int = 60, seed: int = 0):
    """``count`` tight clusters around random directions; returns (centres, [train], [test])."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(count, dim, generator=generator), dim=1) * 5.0
    train, test = [], []
    for centre in centres:
        points = centre + 0.6 * torch.randn(2 * per_cluster, dim, generator=generator)
        train.append(points[:per_cluster])
        test.append(points[per_cluster:])
    return centres, train, test


@pytest.mark.parametrize(
    "selector",
    [
        PrototypeSelector(prototypes_per_task=3),
        PrototypeSelector(prototypes_per_task=1),
        KeySelector(steps=100),
        GaussianSelector(),
        ViewGaussianSelector(),
    ],
    ids=["prototypes-3", "prototypes-1", "keys", "gaussian", "gaussian_views"],
)
def test_selector_routes_separable_clusters(selector):
    _, train, test = gaussian_clusters()
    states = []
    for queries in train:
        states.append(selector.fit_task(queries, list(states), seed=0))
    for task, queries in enumerate(test):
        routed, scores = selector.route(queries, states)
        assert routed.shape == scores.shape == (len(queries),)
        assert (routed == task).float().mean().item() == 1.0
        # Each row's score is its best task's score.
        full = selector.task_scores(queries, states)
        assert torch.allclose(scores, full.max(dim=1).values)


def test_prototype_state_shape_and_unit_norm():
    _, train, _ = gaussian_clusters()
    state = PrototypeSelector(prototypes_per_task=4).fit_task(train[0], [], seed=0)
    assert state["prototypes"].shape == (4, 16)
    assert torch.allclose(state["prototypes"].norm(dim=1), torch.ones(4), atol=1e-5)


def test_key_selector_fitting_is_seeded_and_leaves_earlier_keys_alone():
    _, train, _ = gaussian_clusters()
    selector = KeySelector(steps=50)
    first = selector.fit_task(train[0], [], seed=0)
    kept = first["key"].clone()
    second = selector.fit_task(train[1], [first], seed=0)
    assert torch.equal(first["key"], kept)
    assert torch.equal(selector.fit_task(train[1], [first], seed=0)["key"], second["key"])
    assert second["key"].norm().item() == pytest.approx(1.0, abs=1e-5)


def test_prototype_min_score_refuses_far_away_inputs():
    _centres, train, test = gaussian_clusters()
    selector = PrototypeSelector(prototypes_per_task=2, min_score=0.5)
    states = [selector.fit_task(queries, [], seed=0) for queries in train]
    # Directions orthogonal to every prototype: cosine 0 with all of them.
    prototypes = torch.cat([state["prototypes"] for state in states])
    far = torch.randn(10, 16, generator=torch.Generator().manual_seed(1))
    basis, _ = torch.linalg.qr(prototypes.T)  # orthonormal basis of the prototypes' span
    far = far - (far @ basis) @ basis.T
    routed, scores = selector.route(far, states)
    assert bool((scores.abs() < 1e-4).all())
    assert routed.tolist() == [UNKNOWN_TASK] * 10
    # Inputs near a cluster are still accepted.
    routed, _ = selector.route(test[2], states)
    assert routed.tolist() == [2] * len(test[2])


def test_oracle_selector_does_not_route():
    selector = OracleSelector()
    state = selector.fit_task(torch.randn(5, 16), [], seed=0)
    assert state == {}
    with pytest.raises(ContinualError, match="tasks="):
        selector.route(torch.randn(2, 16), [state])
    with pytest.raises(ContinualError, match="no task"):
        PrototypeSelector().route(torch.randn(2, 16), [])


def test_gaussian_terms_are_cached_per_set_of_tasks_and_never_stale():
    _, train, test = gaussian_clusters()
    selector = GaussianSelector()
    states = [selector.fit_task(train[0], [])]
    states.append(selector.fit_task(train[1], states))
    first = selector.task_scores(test[0], states)
    assert torch.equal(selector.task_scores(test[0], states), first)  # from the cache
    states.append(selector.fit_task(train[2], states))
    grown = selector.task_scores(test[0], states)
    assert grown.shape == (len(test[0]), 3)
    assert torch.allclose(grown, GaussianSelector().task_scores(test[0], states))
    assert torch.allclose(selector.task_scores(test[0], states[:2]), first)


def test_gaussian_own_scores_judge_each_task_alone_and_keep_nothing_per_task():
    data = wide_clusters()
    queries = torch.cat(data)
    selector = GaussianSelector(rank=8)
    states = [selector.fit_task(points, []) for points in data]
    for state in states:
        own = selector.own_scores(queries, state)
        # The same as a selector holding no other task, which inverts the (H, H) matrix.
        alone = GaussianSelector(rank=8).task_scores(queries, [state])[:, 0]
        assert torch.allclose(own, alone, rtol=1e-5, atol=1e-3)
    assert len(selector._own) == 0  # low-rank states are scored from their factors
    assert selector._pooled is None  # and never touch the pooled statistics


def test_gaussian_own_scores_of_dense_states_are_cached_and_dropped_with_the_task():
    import copy
    import gc
    import pickle

    _, train, test = gaussian_clusters()
    selector = GaussianSelector(rank=None)
    states = [selector.fit_task(points, []) for points in train]
    own = [selector.own_scores(test[0], state) for state in states]
    for state, scores in zip(states, own):
        assert torch.allclose(scores, GaussianSelector().task_scores(test[0], [state])[:, 0])
        assert torch.equal(selector.own_scores(test[0], state), scores)  # from the cache
    assert len(selector._own) == 3
    kept = [state["mean"] for state in (states[0], states[2])]
    del states[1], state  # a task removed from the pool
    gc.collect()
    assert len(selector._own) == 2 and all(mean in selector._own for mean in kept)
    assert torch.equal(selector.own_scores(test[0], states[1]), own[2])
    copied = copy.deepcopy(selector)  # caches are not copied (nor pickled): they refill
    assert len(copied._own) == 0 and copied._pooled is None
    assert torch.equal(copied.own_scores(test[0], states[1]), own[2])
    assert pickle.loads(pickle.dumps(selector)).shrinkage == selector.shrinkage


def wide_clusters(count: int = 4, dim: int = 64, per_cluster: int = 80, seed: int = 1):
    """Clusters with an anisotropic spread, wider than the rank kept."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.1, 2.0, dim)
    centres = torch.randn(count, dim, generator=generator) * 3
    return [
        centre + spread * torch.randn(2 * per_cluster, dim, generator=generator)
        for centre in centres
    ]


def test_low_rank_statistics_are_small_and_keep_each_tasks_total_variance():
    points = wide_clusters(count=1)[0]
    low = GaussianSelector(rank=8).fit_task(points, [])
    dense = GaussianSelector(rank=None).fit_task(points, [])
    assert low["basis"].shape == (8, 64) and low["variances"].shape == (8,)
    assert low["residual"].shape == (1,) and float(low["residual"]) > 0
    assert sum(t.numel() * t.element_size() for t in low.values()) < 64 * 64 * 2 / 3
    assert torch.allclose(scatter_of(low).trace(), scatter_of(dense).trace(), rtol=1e-3)
    # The kept directions are the top eigenvectors of the task's covariance.
    top = torch.linalg.eigh(scatter_of(dense)).eigenvalues.flip(0)[:8]
    # int8 directions: each row's step is folded into its variance.
    assert low["basis"].dtype == torch.int8 and low["basis"].abs().amax(1).eq(127).all()
    eigenvalues = (low["basis"].double() ** 2).sum(1) * low["variances"].double()
    assert torch.allclose(eigenvalues, top, rtol=1e-2)


def test_pooled_statistics_are_updated_as_tasks_come_and_go():
    data = wide_clusters()
    selector = GaussianSelector(rank=8)
    states = [selector.fit_task(points, []) for points in data]
    queries = torch.cat(data)
    for chosen in ([0, 1], [0, 1, 2], [0, 2], [0, 2, 3], [3]):
        subset = [states[i] for i in chosen]
        scores = selector.task_scores(queries, subset)
        fresh = GaussianSelector(rank=8).task_scores(queries, subset)
        assert torch.allclose(scores, fresh, rtol=1e-5, atol=1e-4), chosen
        assert torch.allclose(selector._pooled.scatter, summed_scatter(subset))


def test_dense_states_saved_before_are_read_beside_low_rank_ones():
    data = wide_clusters(count=2)
    dense = GaussianSelector(rank=None).fit_task(data[0], [])
    low = GaussianSelector(rank=8).fit_task(data[1], [])
    selector = GaussianSelector(rank=8)
    assert selector.check_state(dense, 64) is None and selector.check_state(low, 64) is None
    assert torch.equal(scatter_of(dense), dense["covariance"].double())
    routed, _ = selector.route(torch.cat(data), [dense, low])
    assert (routed[: len(data[0])] == 0).float().mean() > 0.9
    assert (routed[len(data[0]) :] == 1).float().mean() > 0.9
    broken = {**low, "variances": low["variances"][:3]}
    assert "8 basis vectors and 3 variances" in selector.check_state(broken, 64)
    with pytest.raises(ContinualError, match="rank"):
        GaussianSelector(rank=0)
