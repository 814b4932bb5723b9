"""``hard-prompt``: a written instruction and the label words, zero-shot, no training.

Each input is written as ``{instruction}\\nText: {input}\\nAnswer:``; the language model's
last-token state is scored against the output embeddings of every label word seen so far (the
verbalizer, `continual.verbalizer`), class-incremental like the other baselines: an input is
right only if its own task's right label wins over all labels of all tasks. The task whose
label won counts as where the input was routed; a label word two tasks share is credited to
the task that brought it first (the words alone cannot tell the tasks apart). The model's own
last-token state is used whatever the backbone's pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbone import Backbone
from ..data import Task
from ..metrics import Score
from ..pooling import last_pool
from ..verbalizer import label_word_weight, output_embeddings
from .results import Cost

INSTRUCTION = "Classify the text. Possible answers: {labels}."


class HardPrompt:
    """Zero-shot classification by a written instruction and the LM's label-word logits."""

    def __init__(
        self, backbone: Backbone, *, batch_size: int = 16, instruction: str = INSTRUCTION
    ) -> None:
        output_embeddings(backbone)  # refuse a model without output embeddings up front
        self.backbone = backbone
        self.batch_size = batch_size
        self.instruction = instruction
        self.classes: list[tuple[str, str]] = []  # (task, label) per output
        self.weight = torch.zeros(0, backbone.hidden_size)
        self.train_seconds = 0.0

    def learn(self, task: Task) -> None:
        """Nothing is trained: the task's label words join the answers."""
        self.classes += [(task.name, label) for label in task.labels]
        # A label word shared by two tasks ("democrat") is one answer: the earlier task's.
        words = list(dict.fromkeys(label for _, label in self.classes))
        weight = label_word_weight(self.backbone, words)
        self.weight = weight[[words.index(label) for _, label in self.classes]]

    def _texts(self, texts: Sequence[str]) -> list[str]:
        tokenizer = self.backbone.tokenizer
        labels = ", ".join(dict.fromkeys(label for _, label in self.classes))
        header = self.instruction.format(labels=labels)
        written = []
        for text in texts:
            ids = tokenizer(
                text, add_special_tokens=False, truncation=True, max_length=self.backbone.max_length
            )["input_ids"]
            written.append(f"{header}\nText: {tokenizer.decode(ids)}\nAnswer:")
        return written

    @torch.no_grad()
    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """Label-word logits (B, classes) of ``texts``."""
        backbone = self.backbone
        weight = self.weight.to(backbone.device)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = backbone.tokenizer(
                self._texts(texts[start : start + self.batch_size]),
                padding=True,
                return_tensors="pt",
            ).to(backbone.device)
            mask = batch["attention_mask"]
            hidden = backbone.model(
                input_ids=batch["input_ids"], attention_mask=mask, **backbone.extra_inputs(mask)
            ).last_hidden_state
            out.append(last_pool(hidden.float(), mask) @ weight.T)
        return torch.cat(out)

    def evaluate(self, task: Task) -> Score:
        predicted = self.scores([text for text, _ in task.test]).argmax(1).tolist()
        picked = [self.classes[i] for i in predicted]
        correct = sum(pick == (task.name, gold) for pick, (_, gold) in zip(picked, task.test))
        routed_to: dict[str | None, int] = {}
        for name, _ in picked:
            routed_to[name] = routed_to.get(name, 0) + 1
        return Score(
            task=task.name,
            examples=len(task.test),
            accuracy=100.0 * correct / len(task.test),
            routing_accuracy=100.0 * routed_to.get(task.name, 0) / len(task.test),
            routed_to=routed_to,
        )

    def cost(self) -> Cost:
        # Nothing trained; per task, its label words (an instruction is shared text).
        tasks = max(len({name for name, _ in self.classes}), 1)
        return Cost(0, len(" ".join(label for _, label in self.classes).encode()) / tasks)
