"""What the prompt pool is compared against, on the same backbone, data, order and seed.

Every method learns tasks one after another and is then asked, with no task id, to label inputs
of any task seen so far (class-incremental over the union of all tasks' labels: an input counts
as right only if the method picks its task's right label). The pool variants differ only in how
they route; the others must keep all tasks in one network:

- ``seq-finetune``: the whole backbone and a growing head, trained on each task in turn.
- ``seq-prompt``: one shared soft prompt and a growing head, backbone frozen.
- ``linear-probe``: frozen features, a growing linear head trained on each task in turn.
- ``joint``: full fine-tuning on all tasks at once: the multitask upper bound.

Avalanche's EWC, LwF and Replay are in `continual.bench.avalanche_baselines`. Randomness
(initialisation, data order, dropout while fine-tuning) comes from the method's seed alone: the
global random state is forked, never changed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone
from ..data import Task
from ..metrics import Score
from ..placement import INPUT
from ..progress import Progress
from ..prompt import SoftPrompt
from .results import Cost


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
        # Fine-tuned in float32 whatever the frozen backbone's precision (.to, not .float(): a
        # model dequantized from GGUF refuses .float()).
        self.encoder = copy.deepcopy(backbone.model).to(torch.float32) if finetune else None
        if self.encoder is not None:
            for parameter in self.encoder.parameters():
                parameter.requires_grad_(True)
        self.prompt = (
            SoftPrompt.initialise(backbone, prompt_length, "vocab", generator=self.generator)
            if prompt_length
            else None
        )
        self.head: nn.Linear | None = None  # created by the first task
        self.classes: list[tuple[str, str]] = []  # (task, label) per output
        self.train_seconds = 0.0
        self._fits = 0
        self._frozen: dict[str, torch.Tensor] = {}  # text → features, frozen backbone only

    # -- network ----------------------------------------------------------------------------
    def features(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.backbone.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.prompt is not None:
            return INPUT.features(self.backbone, self.prompt(len(texts)), ids, mask)
        if self.encoder is not None:
            hidden = self.encoder(
                input_ids=ids, attention_mask=mask, **self.backbone.extra_inputs(mask)
            ).last_hidden_state
            return self.backbone.pool(hidden, mask)
        missing = [text for text in dict.fromkeys(texts) if text not in self._frozen]
        if missing:
            with torch.no_grad():
                # The backbone is frozen here: each text's features are computed once.
                batch = self.backbone.tokenize(missing)
                computed = self.backbone.encode(
                    self.backbone.embed(batch["input_ids"]), batch["attention_mask"]
                )
            self._frozen.update(zip(missing, computed))
        return torch.stack([self._frozen[text] for text in texts])

    def _new_head(self, outputs: int) -> nn.Linear:
        # On the meta device first: nn.Linear's own initialisation would draw from the global
        # generator; the weights come from this method's generator instead.
        head = nn.Linear(self.backbone.hidden_size, outputs, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02, generator=self.generator)
            head.bias.zero_()
        return head.to(self.backbone.device)

    def _grow(self, task: Task) -> None:
        old = self.head
        self.classes += [(task.name, label) for label in task.labels]
        self.head = self._new_head(len(self.classes))
        if old is not None:
            with torch.no_grad():
                self.head.weight[: old.out_features] = old.weight
                self.head.bias[: old.out_features] = old.bias

    def _trainable(self) -> list[dict]:
        assert self.head is not None
        groups: list[dict] = [{"params": self.head.parameters(), "lr": self.head_lr}]
        if self.encoder is not None:
            groups.append({"params": self.encoder.parameters(), "lr": self.lr})
        if self.prompt is not None:
            groups.append({"params": self.prompt.parameters(), "lr": self.lr})
        return groups

    # -- the benchmark's method protocols ---------------------------------------------------
    def learn(self, task: Task) -> None:
        self._grow(task)
        start = time.perf_counter()
        self.fit(task.train, task.name)
        self.train_seconds += time.perf_counter() - start

    def learn_all(self, tasks: list[Task]) -> None:
        """Train on all tasks at once (labels of every task known from the start): joint."""
        for task in tasks:
            self.classes += [(task.name, label) for label in task.labels]
        self.head = self._new_head(len(self.classes))
        examples = [((task.name, text), label) for task in tasks for text, label in task.train]
        generator = torch.Generator().manual_seed(self.seed)
        shuffled = [examples[i] for i in torch.randperm(len(examples), generator=generator)]
        start = time.perf_counter()
        self.fit(shuffled, None)
        self.train_seconds += time.perf_counter() - start

    def fit(self, examples: Sequence, task_name: str | None) -> None:
        """Train on examples of one task (``task_name``) or, with None, of named tasks
        given as ((task, text), label) — the joint setting."""
        index = {pair: i for i, pair in enumerate(self.classes)}
        if task_name is None:
            texts = [text for (_, text), _ in examples]
            targets = torch.tensor([index[(name, label)] for (name, _), label in examples])
        else:
            texts = [text for text, _ in examples]
            targets = torch.tensor([index[(task_name, label)] for _, label in examples])
        targets = targets.to(self.backbone.device)
        head = self.head
        assert head is not None, "a task must be added (learn/learn_all) before fitting"
        optimizer = torch.optim.AdamW(self._trainable(), weight_decay=0.0)
        steps = math.ceil(len(texts) / self.batch_size)
        if self.encoder is not None:
            self.encoder.train()  # dropout on while fine-tuning, as usual
        self._fits += 1
        bar = Progress(
            self.epochs * steps, f"{self.name} {task_name or 'all'}", enabled=self.progress
        )
        devices = [self.backbone.device] if self.backbone.device.type == "cuda" else []
        # Dropout draws from the global generator: fork it, seeded per fit, so this method's
        # runs do not depend on what ran before it and change nothing for what runs after.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + self._fits)
            for epoch in range(self.epochs):
                order = torch.randperm(len(texts), generator=self.generator)
                for step in range(steps):
                    rows = order[step * self.batch_size : (step + 1) * self.batch_size]
                    logits = head(self.features([texts[i] for i in rows]))
                    loss = F.cross_entropy(logits, targets[rows])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    bar.update(1, loss=f"{loss.item():.3f}")
                bar.checkpoint(f"epoch {epoch + 1}/{self.epochs}")
        bar.close()
        if self.encoder is not None:
            self.encoder.eval()

    @torch.no_grad()
    def evaluate(self, task: Task) -> Score:
        index = {pair: i for i, pair in enumerate(self.classes)}
        head = self.head
        assert head is not None, "evaluate() before any task was learned"
        correct = 0
        for start in range(0, len(task.test), 64):
            chunk = task.test[start : start + 64]
            predicted = head(self.features([text for text, _ in chunk])).argmax(1)
            gold = torch.tensor(
                [index[(task.name, label)] for _, label in chunk], device=predicted.device
            )
            correct += int((predicted == gold).sum())
        return Score(
            task=task.name, examples=len(task.test), accuracy=100.0 * correct / len(task.test)
        )

    def cost(self) -> Cost:
        assert self.head is not None, "cost() before any task was learned"
        head = self.head.weight.numel() + self.head.bias.numel()
        encoder = sum(p.numel() for p in self.encoder.parameters()) if self.encoder else 0
        prompt = self.prompt.vectors.numel() if self.prompt is not None else 0
        trainable = head + encoder + prompt
        tasks = max(len({name for name, _ in self.classes}), 1)
        # A fine-tuned model must be stored whole after every task; frozen-backbone methods
        # store their small shared part (prompt, head).
        return Cost(trainable, 4 * (trainable if encoder else trainable / tasks))
