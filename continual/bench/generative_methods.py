"""The generative benchmark's methods: written prompts, one shared soft prompt, fine-tuning.

All run on the same frozen language model (a `Backbone` with its output head), inputs and task
order, and train and decode with the library's own functions (`continual.generate`): an input is
read as the pool reads it (its tokens, the target right after them), the target's tokens and the
end-of-text token are learned by teacher forcing, and answers are decoded greedily. Written
prompts use the model's chat template with the task's instruction. The prompt pool's methods
live in `continual.bench.generative_pool`.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from ..backbone import Backbone
from ..entry import TaskEntry
from ..generate import generate, target_token_ids
from ..metrics import task_metric_scores
from ..progress import Progress
from ..prompt import SoftPrompt
from ..text_training import teacher_forced_loss
from .generative_corpora import EXACT_MATCH, GenerativeTask, Pair, Sizes
from .results import Cost

T = TypeVar("T")


@dataclass(frozen=True)
class GenerativeSettings:
    """How every method of a generative run is trained and decoded.

    Attributes:
        max_input_tokens: an input's tokens kept (the rest is cut before any method sees it).
        prompt_length: soft prompt vectors (the pool's prompts and the shared one alike).
        epochs: passes over each task's training split (every trained method).
        batch_size: examples per training step.
        prompt_lr: Adam learning rate of soft prompts.
        finetune_lr: AdamW learning rate of full fine-tuning.
        shots: worked examples in the k-shot written prompt.
        eval_batch_size: rows decoded together.
        seed: seeds prompt initialisation, batch order and shot choice.
    """

    max_input_tokens: int = 32
    prompt_length: int = 8
    epochs: int = 1
    batch_size: int = 8
    prompt_lr: float = 0.03
    finetune_lr: float = 1e-4
    shots: int = 3
    eval_batch_size: int = 16
    seed: int = 0


@dataclass
class GenerativeConfig:
    """Everything that defines a generative run; recorded in every run file.

    Attributes:
        sequence: a key of `GENERATIVE_SEQUENCES`.
        methods: names from `GENERATIVE_METHODS`, run in this order.
        sizes: examples per task in each split.
        settings: training and decoding settings shared by all methods.
        backbone: a causal LM (hub name, folder or ``.gguf``); None: SmolLM2-135M-Instruct
            from its pinned wheel.
    """

    sequence: str = "gen3"
    methods: tuple[str, ...] = ()
    sizes: Sizes = field(default_factory=Sizes)
    settings: GenerativeSettings = field(default_factory=GenerativeSettings)
    backbone: str | None = None

    def shaping(self) -> dict[str, Any]:
        """What shapes results (not which methods run)."""
        data = asdict(self)
        data.pop("methods")
        return data


@dataclass
class GenerativeContext:
    """What every method of a run shares: the backbone and settings, and the pool's trained
    entries and answers per (task, text), which both pool methods reuse."""

    backbone: Backbone
    config: GenerativeConfig
    progress: bool
    pool_entries: dict[str, TaskEntry] = field(default_factory=dict)
    pool_answers: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Answers:
    """A method's outputs for some inputs, with where each input was routed (if routed)."""

    outputs: list[str]
    routed_to: list[str | None] | None = None


@dataclass
class TaskScore:
    """One task's test split scored: the metric in points, and routing where there is some."""

    metric: float
    lenient: float | None
    routing: float | None
    routed_to: dict[str | None, int] = field(default_factory=dict)


def lenient_match(output: str, target: str) -> float:
    """100 when the output's first word, lower-cased and without punctuation, is the target:
    a written prompt's "Positive." counts (reported beside the strict exact match)."""
    words = output.strip().split()
    first = words[0].strip(".,;:!?\"'()*").lower() if words else ""
    return 100.0 if first == target.lower() else 0.0


class GenerativeMethod:
    """What the runner drives: learn tasks in order, answer a task's inputs, report costs.

    Subclasses implement `learn` (or `learn_all`), `answer` and `cost`; `decode` times
    generation and counts its tokens.
    """

    joint = False

    def __init__(self, backbone: Backbone, settings: GenerativeSettings, progress: bool) -> None:
        self.backbone = backbone
        self.settings = settings
        self.progress = progress
        self.train_seconds = 0.0
        self.generate_seconds = 0.0
        self.generated_tokens = 0

    def learn(self, task: GenerativeTask) -> None:
        raise NotImplementedError

    def learn_all(self, tasks: list[GenerativeTask]) -> None:
        raise NotImplementedError

    def cost(self) -> Cost:
        raise NotImplementedError

    def answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        """Outputs for ``task``'s inputs ``texts`` (a routed method may send them elsewhere)."""
        raise NotImplementedError

    def evaluate(self, task: GenerativeTask) -> TaskScore:
        """Score the task's test split (the task given only to methods that need it)."""
        texts = [text for text, _ in task.test]
        targets = [target for _, target in task.test]
        answers = self.answer(task, texts)
        outputs = answers.outputs
        if answers.routed_to is not None:
            # A row sent to another task's entry answers as that task: scored as given.
            routed: dict[str | None, int] = {}
            for name in answers.routed_to:
                routed[name] = routed.get(name, 0) + 1
            routing = 100.0 * routed.get(task.name, 0) / len(texts)
        else:
            routed, routing = {}, None
        scores = task_metric_scores(task.metric, outputs, targets)
        lenient = None
        if task.metric == EXACT_MATCH:
            lenient = sum(map(lenient_match, outputs, targets)) / len(targets)
        return TaskScore(sum(scores) / len(scores), lenient, routing, routed)

    def count_tokens(self, outputs: Sequence[str]) -> None:
        """Add the answers' tokens to the generated count."""
        encoded = self.backbone.tokenizer(list(outputs), add_special_tokens=False)["input_ids"]
        self.generated_tokens += sum(len(ids) for ids in encoded)

    def decode(
        self,
        rows: Sequence[Sequence[int]],
        task: GenerativeTask,
        *,
        backbone: Backbone | None = None,
        prompt: torch.Tensor | None = None,
    ) -> list[str]:
        """Greedy answers for token rows (each after ``prompt`` (L, H) if given), in batches of
        similar length, through `continual.generate.generate`; timed and counted."""
        backbone = backbone or self.backbone
        order = sorted(range(len(rows)), key=lambda row: len(rows[row]))
        outputs: list[str] = [""] * len(rows)
        size = self.settings.eval_batch_size
        width = backbone.hidden_size
        started = time.perf_counter()
        for first in range(0, len(order), size):
            chunk = order[first : first + size]
            ids, mask = _right_padded([rows[row] for row in chunk], backbone)
            prompts = (
                prompt.detach().expand(len(chunk), -1, -1)
                if prompt is not None
                else torch.zeros(len(chunk), 0, width, device=backbone.device)
            )
            answers = generate(
                backbone,
                prompts,
                ids,
                mask,
                [task.max_new_tokens] * len(chunk),
                [task.generation.stop if task.generation else ()] * len(chunk),
            )
            for row, answer in zip(chunk, answers, strict=True):
                outputs[row] = answer.text
        self.generate_seconds += time.perf_counter() - started
        self.count_tokens(outputs)
        return outputs

    def input_ids(self, text: str) -> list[int]:
        """An input as the pool reads it (`Backbone.tokenize`: special tokens as the tokenizer
        adds them, cut to the backbone's max_length)."""
        ids = self.backbone.tokenize([text])["input_ids"][0]
        return ids.tolist()


def _right_padded(rows: Sequence[Sequence[int]], backbone: Backbone) -> tuple[torch.Tensor, ...]:
    """(B, n) ids and mask padded on the right, as `Backbone.tokenize` gives them."""
    width = max(len(row) for row in rows)
    pad = int(backbone.tokenizer.pad_token_id)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(backbone.device), mask.to(backbone.device)


# ---------------------------------------------------------------------------------------------
# Written prompts: no training


class WrittenPrompt(GenerativeMethod):
    """The task's instruction in the chat template, with ``shots`` worked examples from its
    training split before the input (zero-shot with none). The task is given: each input gets
    its own task's instruction."""

    def __init__(
        self, backbone: Backbone, settings: GenerativeSettings, progress: bool, shots: int
    ) -> None:
        super().__init__(backbone, settings, progress)
        self.shots = shots
        self.examples: dict[str, list[Pair]] = {}
        self.instructions: dict[str, str] = {}
        self.cache: dict[tuple[str, str], str] = {}  # nothing learned changes an answer

    def learn(self, task: GenerativeTask) -> None:
        self.instructions[task.name] = task.instruction
        self.examples[task.name] = _shots(task, self.shots, self.settings.seed)

    def chat_ids(self, task: GenerativeTask, text: str) -> list[int]:
        """The written prompt's tokens: the chat template over the worked examples as earlier
        turns and the input as the last, the reply left open (plain lines without a
        template)."""
        instruction = self.instructions[task.name]
        turns = [*self.examples[task.name], (text, "")]
        tokenizer = self.backbone.tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            written = "".join(f"{instruction}\n{x}\n{y}\n" for x, y in turns)
            return list(tokenizer(written.rstrip("\n") + "\n")["input_ids"])
        messages = []
        for user, reply in turns:
            messages.append({"role": "user", "content": f"{instruction}\n\n{user}"})
            if reply:
                messages.append({"role": "assistant", "content": reply})
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        missing = sorted({text for text in texts if (task.name, text) not in self.cache})
        if missing:
            rows = [self.chat_ids(task, text) for text in missing]
            outputs = self.decode(rows, task)
            self.cache.update(((task.name, text), out) for text, out in zip(missing, outputs))
        return Answers([self.cache[(task.name, text)] for text in texts])

    def cost(self) -> Cost:
        # Nothing trained; per task, its written prompt's text.
        written = [
            self.instructions[name] + "".join(x + y for x, y in self.examples[name])
            for name in self.instructions
        ]
        return Cost(0, sum(len(text.encode()) for text in written) / max(len(written), 1))


def _shots(task: GenerativeTask, count: int, seed: int) -> list[Pair]:
    """``count`` training examples, covering as many distinct targets as possible (a label task
    shows each label once before repeating one)."""
    pool = list(task.train)
    random.Random(f"{seed}-{task.name}-shots").shuffle(pool)
    chosen: list[Pair] = []
    seen: set[str] = set()
    for pair in pool:
        if len(chosen) < count and pair[1] not in seen:
            chosen.append(pair)
            seen.add(pair[1])
    for pair in pool:
        if len(chosen) >= count:
            break
        if pair not in chosen:
            chosen.append(pair)
    return chosen


# ---------------------------------------------------------------------------------------------
# Trained methods


def batches(items: Sequence[T], epochs: int, size: int, seed: int | str) -> Iterator[list[T]]:
    """Seeded shuffled batches, epoch after epoch (the last short batch of an epoch kept)."""
    rng = random.Random(seed)
    for _ in range(epochs):
        order = list(items)
        rng.shuffle(order)
        for first in range(0, len(order), size):
            yield order[first : first + size]


class _Trained(GenerativeMethod):
    """A method trained by teacher forcing (`continual.generate.teacher_forced_loss`)."""

    def _fit(
        self,
        label: str,
        backbone: Backbone,
        optimizer: torch.optim.Optimizer,
        tasks: list[GenerativeTask],
        prompt: nn.Parameter | None,
    ) -> None:
        settings = self.settings
        data = [
            (text, ids)
            for task in tasks
            for (text, _), ids in zip(
                task.train,
                target_token_ids(backbone, [t for _, t in task.train], task.max_new_tokens),
                strict=True,
            )
        ]
        steps = settings.epochs * -(-len(data) // settings.batch_size)
        started = time.perf_counter()
        width = backbone.hidden_size
        with Progress(steps, label, enabled=self.progress) as progress:
            for batch in batches(
                data, settings.epochs, settings.batch_size, f"{settings.seed}-{label}"
            ):
                tokens = backbone.tokenize([text for text, _ in batch])
                prompts = (
                    prompt.expand(len(batch), -1, -1)
                    if prompt is not None
                    else torch.zeros(len(batch), 0, width, device=backbone.device)
                )
                loss = teacher_forced_loss(
                    backbone,
                    prompts,
                    tokens["input_ids"],
                    tokens["attention_mask"],
                    [ids for _, ids in batch],
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress.update(1, loss=f"{loss.item():.3f}")
        self.train_seconds += time.perf_counter() - started


class SharedPrompt(_Trained):
    """One soft prompt before every input, trained on each task in turn (no task id).

    It starts as the pool's first prompt does (`SoftPrompt.initialise`, vocabulary init, the
    same seed) and trains with the same optimizer and learning rate."""

    def __init__(self, backbone: Backbone, settings: GenerativeSettings, progress: bool) -> None:
        super().__init__(backbone, settings, progress)
        generator = torch.Generator().manual_seed(settings.seed)
        initial = SoftPrompt.initialise(
            backbone, settings.prompt_length, "vocab", generator=generator
        )
        self.prompt = nn.Parameter(initial.vectors.detach().clone())  # (L, H)
        self.optimizer = torch.optim.Adam([self.prompt], lr=settings.prompt_lr)
        self.tasks = 0

    def learn(self, task: GenerativeTask) -> None:
        self._fit(f"shared prompt: {task.name}", self.backbone, self.optimizer, [task], self.prompt)
        self.tasks += 1

    def answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        rows = [self.input_ids(text) for text in texts]
        return Answers(self.decode(rows, task, prompt=self.prompt))

    def cost(self) -> Cost:
        count = self.prompt.numel()
        return Cost(count, 4 * count / max(self.tasks, 1))


class FineTuned(_Trained):
    """A trainable copy of the whole language model: task after task, or all tasks at once
    (``joint``: the multitask upper bound, as many steps as the whole sequence)."""

    def __init__(
        self, backbone: Backbone, settings: GenerativeSettings, progress: bool, joint: bool
    ) -> None:
        super().__init__(backbone, settings, progress)
        self.joint = joint
        self.copy = Backbone(
            copy.deepcopy(backbone.language_model),
            backbone.tokenizer,
            backbone.name,
            max_length=backbone.max_length,
        )
        self.copy.language_model.requires_grad_(True)  # a Backbone freezes what it wraps
        self.optimizer = torch.optim.AdamW(
            self.copy.language_model.parameters(), lr=settings.finetune_lr
        )

    def learn(self, task: GenerativeTask) -> None:
        self._fit(f"fine-tuning: {task.name}", self.copy, self.optimizer, [task], None)

    def learn_all(self, tasks: list[GenerativeTask]) -> None:
        self._fit("joint fine-tuning", self.copy, self.optimizer, tasks, None)

    def answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        rows = [self.input_ids(text) for text in texts]
        return Answers(self.decode(rows, task, backbone=self.copy))

    def cost(self) -> Cost:
        count = sum(parameter.numel() for parameter in self.copy.language_model.parameters())
        # A fine-tuned model must be stored whole after every task.
        return Cost(count, 4 * count)
