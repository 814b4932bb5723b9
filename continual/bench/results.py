"""Typed results of a benchmark run: costs and one method's run, kept typed until written as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Matrix = list[list[float | None]]


@dataclass(frozen=True)
class Cost:
    """What a method costs: numbers trained and bytes stored per new task."""

    trainable_parameters: int
    bytes_per_task: float


@dataclass
class MethodRun:
    """One method over one task order.

    Attributes:
        method: its registry name.
        order: task names in the order learned.
        matrix: R[i][j], accuracy (%) on task j after learning task i (None: not measured).
        routing: the same for routing accuracy; None for methods that do not route.
        final_only: trained on all tasks at once (joint): only the last row of R exists.
        train_seconds, peak_memory_mb: measured costs; ``cost``: the method's own count.
        routing_confusion: own task → routed task (or "refused") → inputs, after the last task.
    """

    method: str
    order: list[str]
    matrix: Matrix
    routing: Matrix | None
    train_seconds: float
    peak_memory_mb: float
    cost: Cost
    final_only: bool = False
    routing_confusion: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("cost"))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodRun:
        """A run read back from results.json (for ``--resume``)."""
        known = {
            key: value
            for key, value in data.items()
            if key not in ("trainable_parameters", "bytes_per_task")
        }
        return cls(
            **known, cost=Cost(int(data["trainable_parameters"]), float(data["bytes_per_task"]))
        )


def empty_matrix(size: int) -> Matrix:
    return [[None] * size for _ in range(size)]


@dataclass
class History:
    """How a results folder came to be: the first command, and those that resumed it."""

    command: str
    resumed_with: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
