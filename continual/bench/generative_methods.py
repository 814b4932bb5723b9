"""The generative benchmark's methods: written prompts, one shared soft prompt, fine-tuning.

All run on the same frozen language model, inputs and task order. Trained methods read an input
as the pool does (its tokens, the target right after them) and learn the target's tokens and the
end-of-text token (teacher forcing, loss on the target only); written prompts use the model's
chat template with the task's instruction. The prompt pool's methods live in
`continual.bench.generative_pool`.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..metrics import task_metric_scores
from ..progress import Progress
from .causal_lm import LanguageModel, generate, target_loss
from .generative_corpora import EXACT_MATCH, GenerativeTask, Pair
from .results import Cost


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

    Subclasses set ``trained_parameters`` and implement `learn`, `_answer` and `cost`;
    generation is timed and its tokens counted here.
    """

    joint = False

    def __init__(self, lm: LanguageModel, settings: GenerativeSettings, progress: bool) -> None:
        self.lm = lm
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

    def _answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        raise NotImplementedError

    def evaluate(self, task: GenerativeTask) -> TaskScore:
        """Score the task's test split (the task given only to methods that need it)."""
        texts = [text for text, _ in task.test]
        targets = [target for _, target in task.test]
        answers = self._answer(task, texts)
        outputs = answers.outputs
        if answers.routed_to is not None:
            # A row sent to another task's entry answers that task: scored as given, but it
            # rarely matches this task's target.
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

    # -- decoding, shared by the subclasses -----------------------------------------------------
    def decode(
        self,
        rows: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        model: nn.Module | None = None,
        prefixes: Sequence[torch.Tensor | None] | None = None,
    ) -> list[str]:
        """Greedy outputs for token rows, in batches of similar length; timed and counted."""
        lm = self.lm if model is None else LanguageModel(model, self.lm.tokenizer, self.lm.name)
        order = sorted(range(len(rows)), key=lambda row: len(rows[row]))
        outputs: list[str] = [""] * len(rows)
        size = self.settings.eval_batch_size
        started = time.perf_counter()
        for first in range(0, len(order), size):
            chunk = order[first : first + size]
            new = generate(
                lm,
                [rows[row] for row in chunk],
                prefixes=None if prefixes is None else [prefixes[row] for row in chunk],
                max_new_tokens=max_new_tokens,
            )
            for row, ids in zip(chunk, new, strict=True):
                outputs[row] = self.lm.tokenizer.decode(ids, skip_special_tokens=True).strip()
                self.generated_tokens += len(ids)
        self.generate_seconds += time.perf_counter() - started
        return outputs

    def input_ids(self, text: str) -> list[int]:
        """A trained method's input as the pool reads it: the tokenizer's ids (with its special
        tokens), the target right after them."""
        return list(self.lm.tokenizer(text)["input_ids"])


# ---------------------------------------------------------------------------------------------
# Written prompts: no training


class WrittenPrompt(GenerativeMethod):
    """The task's instruction in the chat template, with ``shots`` worked examples from its
    training split before the input (zero-shot with none). The task is given: each input gets
    its own task's instruction."""

    def __init__(
        self, lm: LanguageModel, settings: GenerativeSettings, progress: bool, shots: int
    ) -> None:
        super().__init__(lm, settings, progress)
        self.shots = shots
        self.examples: dict[str, list[Pair]] = {}
        self.instructions: dict[str, str] = {}
        self.cache: dict[tuple[str, str], str] = {}  # nothing learned changes an answer

    def learn(self, task: GenerativeTask) -> None:
        self.instructions[task.name] = task.instruction
        self.examples[task.name] = _shots(task, self.shots, self.settings.seed)

    def _answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        missing = sorted({text for text in texts if (task.name, text) not in self.cache})
        if missing:
            instruction = self.instructions[task.name]
            turns = [(f"{instruction}\n\n{x}", y) for x, y in self.examples[task.name]]
            rows = [
                self.lm.chat_ids([*turns, (f"{instruction}\n\n{text}", "")]) for text in missing
            ]
            outputs = self.decode(rows, task.max_new_tokens)
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


def batches(pairs: Sequence[Pair], epochs: int, size: int, seed: int | str) -> Iterator[list[Pair]]:
    """Seeded shuffled batches, epoch after epoch (the last short batch of an epoch kept)."""
    rng = random.Random(seed)
    for _ in range(epochs):
        order = list(pairs)
        rng.shuffle(order)
        for first in range(0, len(order), size):
            yield order[first : first + size]


class _Trained(GenerativeMethod):
    """A method with parameters trained by teacher forcing."""

    def _fit(
        self,
        label: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: list[Pair],
        prefix: nn.Parameter | None,
    ) -> None:
        settings = self.settings
        lm = LanguageModel(model, self.lm.tokenizer, self.lm.name)
        steps = settings.epochs * -(-len(data) // settings.batch_size)
        started = time.perf_counter()
        model.train()
        with Progress(steps, label, enabled=self.progress) as progress:
            for batch in batches(
                data, settings.epochs, settings.batch_size, f"{settings.seed}-{label}"
            ):
                loss = target_loss(
                    lm,
                    [self.input_ids(text) for text, _ in batch],
                    [self.lm.ids(target) for _, target in batch],
                    prefixes=None if prefix is None else [prefix] * len(batch),
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress.update(1, loss=f"{loss.item():.3f}")
        model.eval()
        self.train_seconds += time.perf_counter() - started


class SharedPrompt(_Trained):
    """One soft prompt before every input, trained on each task in turn (no task id)."""

    def __init__(self, lm: LanguageModel, settings: GenerativeSettings, progress: bool) -> None:
        super().__init__(lm, settings, progress)
        table = lm.model.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(settings.seed)
        # Embeddings of sampled vocabulary tokens: Lester et al.'s stronger initialisation.
        ids = torch.randint(0, table.shape[0], (settings.prompt_length,), generator=generator)
        self.prompt = nn.Parameter(table[ids].detach().clone())  # (L, H)
        self.optimizer = torch.optim.Adam([self.prompt], lr=settings.prompt_lr)
        self.tasks = 0

    def learn(self, task: GenerativeTask) -> None:
        self._fit(
            f"shared prompt: {task.name}",
            self.lm.model,
            self.optimizer,
            task.train,
            self.prompt,
        )
        self.tasks += 1

    def _answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        prompt = self.prompt.detach()
        rows = [self.input_ids(text) for text in texts]
        return Answers(self.decode(rows, task.max_new_tokens, prefixes=[prompt] * len(rows)))

    def cost(self) -> Cost:
        count = self.prompt.numel()
        return Cost(count, 4 * count / max(self.tasks, 1))


class FineTuned(_Trained):
    """A trainable copy of the whole language model: task after task, or all tasks at once
    (``joint``: the multitask upper bound, the same number of steps as the sequence)."""

    def __init__(
        self, lm: LanguageModel, settings: GenerativeSettings, progress: bool, joint: bool
    ) -> None:
        super().__init__(lm, settings, progress)
        self.joint = joint
        self.model = copy.deepcopy(lm.model)
        self.model.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.finetune_lr)

    def learn(self, task: GenerativeTask) -> None:
        self._fit(
            f"fine-tuning: {task.name}",
            self.model,
            self.optimizer,
            task.train,
            None,
        )

    def learn_all(self, tasks: list[GenerativeTask]) -> None:
        mixed = [pair for task in tasks for pair in task.train]
        self._fit("joint fine-tuning", self.model, self.optimizer, mixed, None)

    def _answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        rows = [self.input_ids(text) for text in texts]
        return Answers(self.decode(rows, task.max_new_tokens, model=self.model))

    def cost(self) -> Cost:
        count = sum(parameter.numel() for parameter in self.model.parameters())
        # A fine-tuned model must be stored whole after every task.
        return Cost(count, 4 * count)
