"""`TaskEntry`: one learned task, the same object from training to storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .data import Generation, TaskKind

State = dict[str, torch.Tensor]


@dataclass
class TaskEntry:
    """One learned task: its prompt, the selector's statistics, and how it answers.

    A classification entry answers with its head (``head_weight``, ``head_bias``) and label
    names; a text-to-text entry (``generation`` set) has no head and no labels (its head
    tensors are empty, (0, H) and (0,), and are not stored): the language model's own output
    head writes the answer under ``generation``'s settings.

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
    generation: Generation | None = None

    @property
    def kind(self) -> TaskKind:
        """``classify`` or ``generate``."""
        return "classify" if self.generation is None else "generate"

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name → tensor map, as stored in the task's safetensors file."""
        flat = {"prompt": self.prompt}
        if self.generation is None:
            flat.update({"head.weight": self.head_weight, "head.bias": self.head_bias})
        flat.update({f"selector.{key}": value for key, value in self.selector_state.items()})
        return flat

    @classmethod
    def from_tensors(
        cls,
        name: str,
        labels: list[str],
        tensors: dict[str, torch.Tensor],
        stats: dict[str, Any] | None = None,
        generation: Generation | None = None,
    ) -> TaskEntry:
        """The inverse of `tensors`; raises KeyError for a missing prompt or head tensor."""
        prompt = tensors["prompt"]
        if generation is None:
            weight, bias = tensors["head.weight"], tensors["head.bias"]
        else:
            weight, bias = prompt.new_zeros(0, prompt.shape[-1]), prompt.new_zeros(0)
        return cls(
            name=name,
            labels=list(labels),
            prompt=prompt,
            head_weight=weight,
            head_bias=bias,
            selector_state={
                key.removeprefix("selector."): value
                for key, value in tensors.items()
                if key.startswith("selector.")
            },
            stats=dict(stats or {}),
            generation=generation,
        )

    @property
    def trainable_parameters(self) -> int:
        """Numbers trained for this task: prompt and head (selector statistics not counted)."""
        return self.prompt.numel() + self.head_weight.numel() + self.head_bias.numel()

    @property
    def bytes(self) -> int:
        """Bytes its tensors take as stored (prompt, head and selector state)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())
