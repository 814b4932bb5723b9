"""`TaskEntry`: one learned task, the same object from training to storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

State = dict[str, torch.Tensor]


@dataclass
class TaskEntry:
    """One learned task: its prompt, head, label names and the selector's statistics.

    Training (`continual.learner.train_task`) makes an entry with an empty ``selector_state``;
    the pool fills it when it adds the entry. Once in a pool, an entry is never modified.
    """

    name: str
    labels: list[str]
    prompt: torch.Tensor  # (L, H)
    head_weight: torch.Tensor  # (C, H)
    head_bias: torch.Tensor  # (C,)
    selector_state: State = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name → tensor map, as stored in the task's safetensors file."""
        flat = {"prompt": self.prompt, "head.weight": self.head_weight, "head.bias": self.head_bias}
        flat.update({f"selector.{key}": value for key, value in self.selector_state.items()})
        return flat

    @classmethod
    def from_tensors(
        cls,
        name: str,
        labels: list[str],
        tensors: dict[str, torch.Tensor],
        stats: dict[str, Any] | None = None,
    ) -> TaskEntry:
        """The inverse of `tensors`; raises KeyError for a missing prompt or head tensor."""
        return cls(
            name=name,
            labels=list(labels),
            prompt=tensors["prompt"],
            head_weight=tensors["head.weight"],
            head_bias=tensors["head.bias"],
            selector_state={
                key.removeprefix("selector."): value
                for key, value in tensors.items()
                if key.startswith("selector.")
            },
            stats=dict(stats or {}),
        )

    @property
    def trainable_parameters(self) -> int:
        """Numbers trained for this task: prompt and head (selector statistics not counted)."""
        return self.prompt.numel() + self.head_weight.numel() + self.head_bias.numel()

    @property
    def bytes(self) -> int:
        """Bytes its tensors take as stored (prompt, head and selector state)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())
