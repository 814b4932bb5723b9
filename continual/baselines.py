"""What the prompt pool is compared against, on the same backbone, data, order and seed.

Every method learns tasks one after another and is then asked, with no task id, to label inputs
of any task seen so far (class-incremental over the union of all tasks' labels: an input counts
as right only if the method picks its task's right label). The pool variants differ only in how
they route; the others must keep all tasks in one network:

- ``seq-finetune``: the whole backbone and a growing head, trained on each task in turn.
- ``seq-prompt``: one shared soft prompt and a growing head, backbone frozen.
- ``linear-probe``: frozen features, a growing linear head trained on each task in turn.
- ``joint``: full fine-tuning on all tasks at once: the multitask upper bound.

Avalanche's EWC, LwF and Replay live in `continual.integrations.avalanche`.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .backbone import Backbone
from .data import Task
from .prompt import SoftPrompt, prompted_features


class Method(Protocol):
    """A continual learner the benchmark can drive."""

    name: str

    def learn(self, task: Task) -> None:
        """Learn one more task (only its data is available)."""

    def evaluate(self, task: Task) -> tuple[float, float | None]:
        """Accuracy (%) on ``task``'s test split with no task id, and routing accuracy (%) or None."""

    def cost(self) -> dict:
        """``trainable_parameters`` and ``bytes_per_task`` (what must be stored per new task)."""


class ClassIncremental:
    """A network over the union of all tasks' labels, grown by one block of outputs per task.

    Args:
        backbone: the shared frozen backbone (copied when ``finetune``).
        finetune: train every backbone weight (else the backbone stays frozen).
        prompt_length: a shared soft prompt of this length (0: none).
        epochs, batch_size, lr, head_lr: training settings.
    """

    def __init__(
        self,
        name: str,
        backbone: Backbone,
        *,
        finetune: bool = False,
        prompt_length: int = 0,
        epochs: int = 3,
        batch_size: int = 32,
        lr: float = 5e-5,
        head_lr: float = 1e-2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.name = name
        self.backbone = backbone
        self.finetune = finetune
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.head_lr = head_lr
        self.seed = seed
        self.progress = progress
        self.generator = torch.Generator().manual_seed(seed)
        self.encoder = copy.deepcopy(backbone.model) if finetune else None
        if self.encoder is not None:
            for parameter in self.encoder.parameters():
                parameter.requires_grad_(True)
        self.prompt = (
            SoftPrompt.initialise(backbone, prompt_length, "vocab", generator=self.generator)
            if prompt_length else None
        )
        self.head: nn.Linear | None = None  # created by the first task
        self.classes: list[tuple[str, str]] = []  # (task, label) per output
        self._frozen: dict[str, torch.Tensor] = {}  # text → features, frozen backbone only

    # -- network ----------------------------------------------------------------------------
    def features(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.backbone.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.prompt is not None:
            return prompted_features(self.backbone, self.prompt(len(texts)), ids, mask)
        if self.encoder is not None:
            hidden = self.encoder(input_ids=ids, attention_mask=mask,
                                  token_type_ids=torch.zeros_like(mask)).last_hidden_state
            weights = mask.unsqueeze(-1).float()
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        missing = [text for text in dict.fromkeys(texts) if text not in self._frozen]
        if missing:
            with torch.no_grad():
                # The backbone is frozen here: each text's features are computed once.
                batch = self.backbone.tokenize(missing)
                computed = self.backbone.encode(self.backbone.embed(batch["input_ids"]),
                                                batch["attention_mask"])
            self._frozen.update(zip(missing, computed))
        return torch.stack([self._frozen[text] for text in texts])

    def _grow(self, task: Task) -> None:
        old = self.head
        self.classes += [(task.name, label) for label in task.labels]
        self.head = nn.Linear(self.backbone.hidden_size, len(self.classes))
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.02, generator=self.generator)
            self.head.bias.zero_()
            if old is not None:
                self.head.weight[: old.out_features] = old.weight
                self.head.bias[: old.out_features] = old.bias

    def _trainable(self) -> list[dict]:
        groups = [{"params": self.head.parameters(), "lr": self.head_lr}]
        if self.encoder is not None:
            groups.append({"params": self.encoder.parameters(), "lr": self.lr})
        if self.prompt is not None:
            groups.append({"params": self.prompt.parameters(), "lr": self.lr})
        return groups

    # -- Method ------------------------------------------------------------------------------
    def learn(self, task: Task) -> None:
        self._grow(task)
        self.fit(task.train, task.name)

    def fit(self, examples: Sequence[tuple[str, str]], task_name: str | None) -> None:
        """Train on examples of one task (``task_name``) or, with None, of named tasks
        given as ((task, text), label) — the joint setting."""
        index = {pair: i for i, pair in enumerate(self.classes)}
        if task_name is None:
            texts = [text for (_, text), _ in examples]
            targets = torch.tensor([index[(name, label)] for (name, _), label in examples])
        else:
            texts = [text for text, _ in examples]
            targets = torch.tensor([index[(task_name, label)] for _, label in examples])
        optimizer = torch.optim.AdamW(self._trainable(), weight_decay=0.0)
        steps = math.ceil(len(texts) / self.batch_size)
        if self.encoder is not None:
            self.encoder.train()  # dropout on while fine-tuning, as usual
        bar = tqdm(total=self.epochs * steps, desc=f"{self.name} {task_name or 'all'}",
                   unit="step", disable=not self.progress, leave=False)
        for _ in range(self.epochs):
            order = torch.randperm(len(texts), generator=self.generator)
            for step in range(steps):
                rows = order[step * self.batch_size : (step + 1) * self.batch_size]
                logits = self.head(self.features([texts[i] for i in rows]))
                loss = F.cross_entropy(logits, targets[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
        bar.close()
        if self.encoder is not None:
            self.encoder.eval()

    @torch.no_grad()
    def evaluate(self, task: Task) -> tuple[float, None]:
        index = {pair: i for i, pair in enumerate(self.classes)}
        correct = 0
        for start in range(0, len(task.test), 64):
            chunk = task.test[start : start + 64]
            predicted = self.head(self.features([text for text, _ in chunk])).argmax(1)
            gold = torch.tensor([index[(task.name, label)] for _, label in chunk])
            correct += int((predicted == gold).sum())
        return 100.0 * correct / len(task.test), None

    def cost(self) -> dict:
        head = self.head.weight.numel() + self.head.bias.numel()
        encoder = sum(p.numel() for p in self.encoder.parameters()) if self.encoder else 0
        prompt = self.prompt.vectors.numel() if self.prompt is not None else 0
        trainable = head + encoder + prompt
        tasks = max(len({name for name, _ in self.classes}), 1)
        # A fine-tuned model must be stored whole after every task; frozen-backbone methods
        # store their small shared part (prompt, head).
        return {"trainable_parameters": trainable,
                "bytes_per_task": 4 * (trainable if encoder else trainable / tasks)}


def joint_training(method: ClassIncremental, tasks: Sequence[Task]) -> None:
    """Train ``method`` on all tasks at once (labels of every task known from the start)."""
    for task in tasks:
        method.classes += [(task.name, label) for label in task.labels]
    method.head = nn.Linear(method.backbone.hidden_size, len(method.classes))
    with torch.no_grad():
        method.head.weight.normal_(0.0, 0.02, generator=method.generator)
        method.head.bias.zero_()
    examples = [((task.name, text), label) for task in tasks for text, label in task.train]
    generator = torch.Generator().manual_seed(method.seed)
    shuffled = [examples[i] for i in torch.randperm(len(examples), generator=generator)]
    start = time.perf_counter()
    method.fit(shuffled, None)
    method.train_seconds = time.perf_counter() - start
