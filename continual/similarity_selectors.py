"""Selectors that match an input to tasks by cosine similarity: k-means prototypes (S-Prompts)
and one learned key per task (L2P)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .entry import State
from .errors import ContinualError
from .selector_interface import Selector, check_min_score


class PrototypeSelector(Selector):
    """Nearest prototype by cosine similarity (S-Prompts): k-means centroids of each task's queries.

    Args:
        prototypes_per_task: k-means clusters per task; several capture tasks with sub-topics.
        min_score: refuse inputs whose best cosine similarity is below this (None: never refuse).
    """

    name = "prototypes"

    def __init__(self, prototypes_per_task: int = 8, min_score: float | None = None) -> None:
        if (
            isinstance(prototypes_per_task, bool)
            or not isinstance(prototypes_per_task, int)
            or prototypes_per_task < 1
        ):
            raise ContinualError("prototypes_per_task must be an integer of at least 1")
        self.prototypes_per_task = prototypes_per_task
        self.min_score = check_min_score(min_score)

    def fit_task(self, queries: torch.Tensor, previous: list[State], seed: int = 0) -> State:
        from sklearn.cluster import KMeans

        points = F.normalize(queries.float(), dim=1).numpy().astype(np.float64)
        clusters = min(self.prototypes_per_task, len(np.unique(points, axis=0)))
        if clusters <= 1:
            centroids = points.mean(axis=0, keepdims=True)
        else:
            kmeans = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(points)
            centroids = kmeans.cluster_centers_
        prototypes = F.normalize(torch.from_numpy(centroids).float(), dim=1)
        return {"prototypes": prototypes.contiguous()}

    def state_shapes(self, hidden: int) -> dict[str, tuple[int, ...]]:
        return {"prototypes": (-1, hidden)}

    def task_scores(self, queries: torch.Tensor, states: list[State]) -> torch.Tensor:
        normed = F.normalize(queries.float(), dim=1)
        # Tasks may hold different numbers of prototypes: score each task by its best one.
        return torch.stack(
            [(normed @ state["prototypes"].T).max(dim=1).values for state in states], dim=1
        )

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prototypes_per_task": self.prototypes_per_task,
            "min_score": self.min_score,
        }


class KeySelector(Selector):
    """One learned key per task, matched by cosine similarity (L2P's query-key matching).

    The new key is trained on its task's queries with L2P's pull loss (1 - cos(q, k)), plus a
    hinge that keeps it at least ``margin`` away from earlier tasks' keys, which stay frozen.
    """

    name = "keys"

    def __init__(
        self,
        steps: int = 200,
        lr: float = 0.05,
        margin: float = 0.1,
        push_weight: float = 1.0,
        min_score: float | None = None,
    ) -> None:
        self.steps = steps
        self.lr = lr
        self.margin = margin
        self.push_weight = push_weight
        self.min_score = check_min_score(min_score)

    def fit_task(self, queries: torch.Tensor, previous: list[State], seed: int = 0) -> State:
        generator = torch.Generator().manual_seed(seed)
        normed = F.normalize(queries.float(), dim=1)
        start = normed.mean(0) + 0.01 * torch.randn(normed.shape[1], generator=generator)
        key = torch.nn.Parameter(start)
        earlier = [F.normalize(state["key"], dim=0) for state in previous]
        optimizer = torch.optim.Adam([key], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                unit = F.normalize(key, dim=0)
                loss = (1 - normed @ unit).mean()
                if earlier:
                    # Keep distinct tasks' keys apart: the cosine between keys should stay below
                    # that between the key and its own queries by at least the margin.
                    own = (normed @ unit).mean().detach()
                    rivals = torch.stack(earlier) @ unit
                    loss = loss + self.push_weight * F.relu(rivals - own + self.margin).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return {"key": F.normalize(key.detach(), dim=0).contiguous()}

    def state_shapes(self, hidden: int) -> dict[str, tuple[int, ...]]:
        return {"key": (hidden,)}

    def task_scores(self, queries: torch.Tensor, states: list[State]) -> torch.Tensor:
        keys = torch.stack([state["key"] for state in states])  # (T, H)
        return F.normalize(queries.float(), dim=1) @ keys.T

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps": self.steps,
            "lr": self.lr,
            "margin": self.margin,
            "push_weight": self.push_weight,
            "min_score": self.min_score,
        }
