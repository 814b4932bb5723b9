"""Training one task: a new soft prompt and linear head over the frozen backbone, or for a
text-to-text task a soft prompt alone before the language model (`continual.generate`).

Only the new prompt and head receive gradients; the backbone and every earlier task are out of
reach of the optimizer. Training is seeded and deterministic, shows a progress bar, and stops
early on the validation split (keeping the best epoch). Randomness comes from one seeded
``torch.Generator``; the process's global random state is neither read nor changed.

Started by torchrun or ``accelerate launch`` (`continual.distributed`), the processes train one
task data-parallel: each draws the same seeded order, takes its share of every global batch of
``batch_size`` rows, and DistributedDataParallel averages the gradients, so every process ends
with the prompt and head one process would have learned (up to float rounding).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .backbone import Backbone
from .data import Generation, Task
from .entry import TaskEntry
from .errors import ContinualError
from .generate import (
    PromptedLanguageModel,
    default_max_new_tokens,
    metric_total,
    target_token_ids,
)
from .progress import Progress
from .prompt import Placement, PromptInit, SoftPrompt, prompted_features


@dataclass
class TrainingConfig:
    """How one task's prompt and head are trained.

    Attributes:
        epochs: passes over the training split at most.
        batch_size: examples per step.
        prompt_lr: Adam learning rate of the prompt vectors (prompts want a large one).
        head_lr: Adam learning rate of the linear head.
        patience: epochs without validation improvement before stopping (0: never stop early).
        prompt_init: ``vocab``, ``random`` or ``text``.
        prompt_text: the text for ``text`` init, e.g. "Classify the topic of this article".
        head: ``linear`` (trained) or ``verbalizer``: each label word's output embedding in
            the language model, left untrained (`continual.verbalizer`; decoders only).
    """

    epochs: int = 6
    batch_size: int = 32
    prompt_lr: float = 0.03
    head_lr: float = 0.01
    patience: int = 2
    prompt_init: PromptInit = "vocab"
    prompt_text: str | None = None
    head: Literal["linear", "verbalizer"] = "linear"

    def __post_init__(self) -> None:
        # A manifest or a caller may give any value: check each field's type and range here,
        # naming the field, rather than failing mid-training.
        for name, least in (("epochs", 1), ("batch_size", 1), ("patience", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < least:
                raise ContinualError(
                    f"training field {name!r} must be an integer of at least {least}, got {value!r}"
                )
        for name in ("prompt_lr", "head_lr"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ContinualError(
                    f"training field {name!r} must be a positive finite number, got {value!r}"
                )
        if self.prompt_init not in ("vocab", "random", "text"):
            raise ContinualError(
                f"training field 'prompt_init' must be 'vocab', 'random' or "
                f"'text', got {self.prompt_init!r}"
            )
        if self.prompt_text is not None and not isinstance(self.prompt_text, str):
            raise ContinualError(
                f"training field 'prompt_text' must be text or null, got {self.prompt_text!r}"
            )
        if self.prompt_init == "text" and not (self.prompt_text or "").strip():
            raise ContinualError(
                "training field 'prompt_text' must be a non-empty text when 'prompt_init' is 'text'"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# Seeds torch.Generator.manual_seed accepts without overflow.
MAX_SEED = 2**63 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is an integer in 0..2**63-1; a `ContinualError` naming ``name`` if not."""
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ContinualError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def train_task(
    backbone: Backbone,
    task: Task,
    prompt_length: int,
    config: TrainingConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    placement: Placement = "input",
    on_epoch: Callable[[int, SoftPrompt, nn.Linear], None] | None = None,
) -> TaskEntry:
    """Train a soft prompt and a linear head for ``task``.

    ``on_epoch(epoch, prompt, head)`` is called after each epoch (1-based) with the live
    prompt and head, e.g. to log or evaluate them; an exception it raises ends training there.

    ``placement``: the prompt at the ``input`` or a deep prompt from the ``query_layer`` on
    (see `continual.prompt`). Returns a `TaskEntry` with detached tensors and an empty selector
    state (the pool fits that when it adds the entry).
    """
    generator = torch.Generator().manual_seed(check_seed(seed))
    generation = _generation_for(backbone, task, prompt_length, placement)
    parallel = distributed.init(backbone.device)
    ranks, me = distributed.world_size(), distributed.rank()
    progress = progress and me == 0
    prompt = SoftPrompt.initialise(
        backbone,
        prompt_length,
        config.prompt_init,
        text=config.prompt_text,
        generator=generator,
        placement=placement,
    ).to(backbone.device)
    head = _new_head(backbone.hidden_size, len(task.labels), generator).to(backbone.device)
    # A deep prompt learns at the same rate as one at the input: scaling the rate by its
    # vectors' larger spread (hidden states are about 12x the embeddings' for MiniLM) was
    # measured worse on text4 (oracle 69.3 with the square root of that ratio, three tasks at
    # chance with the full ratio, against 70.7 unscaled).
    groups: list[dict] = [{"params": prompt.parameters(), "lr": config.prompt_lr}]
    if generation is not None:
        # The language model's own output head writes the answer: no head is trained.
        head.requires_grad_(False)
    elif config.head == "verbalizer":
        from .verbalizer import verbalizer_weight

        with torch.no_grad():
            head.weight.copy_(verbalizer_weight(backbone, task.labels))
        head.requires_grad_(False)
    elif config.head == "linear":
        groups.append({"params": head.parameters(), "lr": config.head_lr})
    else:
        raise ContinualError(f"unknown head {config.head!r}; use 'linear' or 'verbalizer'")
    optimizer = torch.optim.Adam(groups)
    model: nn.Module = (
        PromptedClassifier(backbone, prompt, head)
        if generation is None
        else PromptedLanguageModel(backbone, prompt)
    )
    if parallel:
        # Every rank built the same prompt and head from the same seed; DDP also broadcasts
        # rank 0's copy at this point, so they start identical whatever happened before.
        device_ids = [backbone.device.index] if backbone.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    texts = [text for text, _ in task.train]
    if generation is None:
        targets = torch.tensor(
            [task.label_index(label) for _, label in task.train], device=backbone.device
        )
    else:
        answers = target_token_ids(
            backbone, [target for _, target in task.train], generation.max_new_tokens or 1
        )
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    # (validation accuracy, (prompt, head weight, head bias), epoch)
    best: tuple[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, int] = (
        -1.0,
        None,
        0,
    )
    stale = 0
    start = time.perf_counter()
    # A deep prompt's training texts (and validation texts) go through the layers below it
    # once, here, rather than once per epoch.
    lower = (
        _LowerStates.build(
            backbone, prompt, [*texts, *(text for text, _ in task.validation)], config.batch_size
        )
        if placement == "query_layer"
        else None
    )
    bar = Progress(config.epochs * steps_per_epoch, f"learn {task.name}", enabled=progress)
    epochs_run = 0
    for epoch in range(config.epochs):
        epochs_run = epoch + 1
        order = torch.randperm(len(texts), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            chunk = [texts[i] for i in rows]
            weights = None
            if parallel:
                rows, weights = _shard(rows, ranks, me, backbone.device)
                chunk = [texts[i] for i in rows]
            batch = backbone.tokenize(chunk)
            if generation is not None:
                loss = _optimizer_step(
                    optimizer,
                    model(
                        batch["input_ids"],
                        batch["attention_mask"],
                        [answers[i] for i in rows.tolist()],
                        weights,
                    ),
                    weights is not None,
                )
            else:
                loss = train_step(
                    backbone,
                    prompt,
                    head,
                    optimizer,
                    batch["input_ids"],
                    batch["attention_mask"],
                    targets[rows],
                    model=model if parallel else None,
                    row_weights=weights,
                    lower=None if lower is None else lower.batch(chunk, batch["attention_mask"]),
                )
            if parallel:  # the global batch's mean loss, for the progress line
                loss = distributed.all_sum([loss], backbone.device)[0]
            total_loss += loss
            bar.update(1, loss=f"{total_loss / (step + 1):.3f}")
        if not task.validation:
            bar.checkpoint(f"epoch {epoch + 1}/{config.epochs}")
            if on_epoch is not None:
                on_epoch(epoch + 1, prompt, head)
            continue
        # Each rank scores its share of the validation split; the summed counts give every
        # rank the same accuracy (or mean metric), so early stopping decides the same
        # everywhere. A text-to-text task is validated by its metric on generated answers.
        share = task.validation[me::ranks]
        if generation is None:
            counts = _correct(backbone, prompt, head, task, share, config.batch_size, lower)
        else:
            counts = metric_total(
                backbone, prompt.vectors.detach(), share, generation, config.batch_size
            )
        correct, seen = distributed.all_sum(counts, backbone.device)
        accuracy = correct / max(seen, 1)
        shown = f"{accuracy:.1%}" if generation is None else f"{accuracy:.1f} {generation.metric}"
        bar.checkpoint(f"epoch {epoch + 1}/{config.epochs}", val=shown)
        if accuracy > best[0]:
            state = (
                prompt.vectors.detach().clone(),
                head.weight.detach().clone(),
                head.bias.detach().clone(),
            )
            best = (accuracy, state, epoch + 1)
            stale = 0
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(epoch + 1, prompt, head)
        if config.patience and stale >= config.patience:
            break
    bar.close()
    if best[1] is not None:
        vectors, weight, bias = best[1]
    else:
        vectors, weight, bias = prompt.vectors.detach(), head.weight.detach(), head.bias.detach()
    distributed.check_same((vectors, weight, bias), "prompts and heads")
    stats = {
        "train_examples": len(texts),
        "epochs_run": epochs_run,
        "best_epoch": best[2] if best[1] is not None else epochs_run,
        "validation_accuracy": None if best[1] is None else round(100 * best[0], 2),
        "train_seconds": round(time.perf_counter() - start, 2),
        "trainable_parameters": prompt.vectors.numel()
        + (weight.numel() + bias.numel() if config.head == "linear" else 0),
        "head": config.head if generation is None else None,
        "seed": seed,
    }
    if generation is not None:
        # The validation figure is the task's metric (mean points), not an accuracy.
        stats["validation_score"] = stats.pop("validation_accuracy")
        if stats["validation_score"] is not None:
            stats["validation_score"] = round(best[0], 2)
    if ranks > 1:
        stats["processes"] = ranks
    # Entries live on the CPU: that is how they are stored, and the pool moves them as needed.
    return TaskEntry(
        name=task.name,
        labels=list(task.labels),
        prompt=vectors.cpu().clone(),
        head_weight=weight.cpu().clone(),
        head_bias=bias.cpu().clone(),
        stats=stats,
        generation=generation,
    )


def _generation_for(
    backbone: Backbone, task: Task, prompt_length: int, placement: Placement
) -> Generation | None:
    """A text-to-text task's generation settings, ``max_new_tokens`` filled in; refused on a
    backbone that cannot write text or with a prompt not at the input."""
    if task.generation is None:
        return None
    backbone.check_generative()
    if placement != "input":
        raise ContinualError(
            f"task {task.name!r} is text-to-text: its prompt goes before the input "
            "(placement 'input'), not at the query layer"
        )
    generation = task.generation
    if generation.max_new_tokens is None:
        longest = default_max_new_tokens(backbone, [target for _, target in task.train])
        generation = dataclasses.replace(generation, max_new_tokens=longest)
    limit = backbone.position_limit
    assert generation.max_new_tokens is not None
    longest = prompt_length + backbone.max_length + generation.max_new_tokens
    if limit is not None and not backbone.is_seq2seq and longest > limit:
        raise ContinualError(
            f"task {task.name!r}: prompt_length {prompt_length} + max_length "
            f"{backbone.max_length} + max_new_tokens {generation.max_new_tokens} exceeds "
            f"the model's {limit} positions"
        )
    return generation


def _optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, shared: bool) -> float:
    """Backward and update; returns the loss. ``shared``: the loss is this process's share of a
    global batch's mean, scaled by the processes' number so that DDP's average of their
    gradients is the gradient of that mean."""
    objective = loss * distributed.world_size() if shared else loss
    optimizer.zero_grad()
    objective.backward()
    optimizer.step()
    return loss.item()


def train_step(
    backbone: Backbone,
    prompt: SoftPrompt,
    head: nn.Linear,
    optimizer: torch.optim.Optimizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    *,
    model: nn.Module | None = None,
    row_weights: torch.Tensor | None = None,
    lower: torch.Tensor | None = None,
) -> float:
    """One optimizer step on one batch (forward, backward, update); returns the loss.

    Only ``prompt`` and ``head`` get gradients: the frozen backbone's weights never need them,
    and with a deep prompt nothing below the query layer is differentiated at all. ``lower``
    (deep prompts only): the batch's saved states at the prompt's first layer, so the layers
    below are not run either (`_LowerStates`).

    Data-parallel, ``model`` is the `DistributedDataParallel` wrapper of a
    `PromptedClassifier` over ``prompt`` and ``head``, the rows are this process's share of a
    global batch, and ``row_weights`` weighs each row's loss (1 / the global batch's rows; 0
    for a stand-in row when the share is empty). The returned loss is then this share's part
    of the global batch's mean loss.
    """
    classifier = model if model is not None else PromptedClassifier(backbone, prompt, head)
    logits = classifier(input_ids, attention_mask, lower)
    if row_weights is None:
        loss = F.cross_entropy(logits, targets)
    else:
        loss = (F.cross_entropy(logits, targets, reduction="none") * row_weights).sum()
    return _optimizer_step(optimizer, loss, row_weights is not None)


class PromptedClassifier(nn.Module):
    """One task's trainable part as a module: logits of a batch under ``prompt`` and ``head``.

    The frozen backbone is held but not registered as a submodule, so that
    `DistributedDataParallel` broadcasts and synchronises the prompt and head alone, not the
    backbone's weights, which every process loads identically and never changes.
    """

    backbone: Backbone

    def __init__(self, backbone: Backbone, prompt: SoftPrompt, head: nn.Linear) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # bypasses submodule registration
        self.prompt = prompt
        self.head = head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lower: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, C) of a tokenized batch (``lower``: see `train_step`)."""
        features = prompted_features(
            self.backbone, self.prompt(len(input_ids)), input_ids, attention_mask, lower
        )
        return self.head(features)


def _shard(
    rows: torch.Tensor, ranks: int, rank: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of a global batch, every ``ranks``-th from ``rank``, and their weights.

    Each row weighs 1 / the global batch's size, so the shares' losses add up to the batch's
    mean. A share may be empty (a last batch with fewer rows than ranks); DDP still needs a
    backward pass from every rank, so it gets the batch's first row with weight 0.
    """
    share = rows[rank::ranks]
    weights = torch.full((len(share),), 1.0 / len(rows), device=device)
    if len(share) == 0:
        share, weights = rows[:1], torch.zeros(1, device=device)
    return share, weights


# Saved lower-layer states take (tokens x hidden) numbers per text; above this many bytes for
# a task they are not kept and training runs every layer, as it would without them.
LOWER_STATES_BYTES = 1 << 30


class _LowerStates:
    """Each text's states at a deep prompt's first layer, computed once for the whole training.

    The layers below a deep prompt see only the text and placeholders that every prompt shares
    (`Backbone.with_placeholders`), so their output for a text is the same in every epoch;
    with it saved, a step runs (forward and backward) only the layers the prompt is in.
    Measured on the packaged MiniLM (query layer 3 of 6): see benchmarks/perf.py.
    """

    def __init__(self, backbone: Backbone, rows: dict[str, torch.Tensor]) -> None:
        self.backbone = backbone
        self.rows = rows

    @classmethod
    def build(
        cls, backbone: Backbone, prompt: SoftPrompt, texts: Sequence[str], batch_size: int
    ) -> _LowerStates | None:
        """The states of ``texts``; None where saving them is not worth it or not exact."""
        if prompt.vectors.dim() != 3 or not texts:
            return None
        unique = list(dict.fromkeys(texts))
        tokens = backbone.tokenizer(unique, truncation=True, max_length=backbone.max_length)
        itemsize = torch.finfo(backbone.dtype).bits // 8
        size = sum(len(ids) for ids in tokens["input_ids"]) * backbone.hidden_size * itemsize
        if size > LOWER_STATES_BYTES:
            return None
        start = backbone.num_layers - prompt.vectors.shape[0]
        rows: dict[str, torch.Tensor] = {}
        for first in range(0, len(unique), batch_size):
            chunk = unique[first : first + batch_size]
            batch = backbone.tokenize(chunk)
            states = backbone.lower_states(
                batch["input_ids"], batch["attention_mask"], prompt.length, start
            )
            for text, row, count in zip(chunk, states, batch["attention_mask"].sum(1).tolist()):
                rows[text] = row[: int(count)].clone()  # its own storage: padding not kept
        saved = cls(backbone, rows)
        return saved if saved._agrees(prompt, unique[:batch_size]) else None

    def batch(self, texts: Sequence[str], attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, n, H) for a batch tokenized to ``attention_mask`` (B, n); padding rows are
        zeros (their keys are masked out and their outputs are not pooled)."""
        first = self.rows[texts[0]]
        out = first.new_zeros(len(texts), attention_mask.shape[1], first.shape[-1])
        for i, text in enumerate(texts):
            row = self.rows[text]
            out[i, : row.shape[0]] = row
        return out

    @torch.no_grad()
    def _agrees(self, prompt: SoftPrompt, texts: Sequence[str]) -> bool:
        """Whether a pass from the saved states gives the full pass's features. A family whose
        lower layers hand more than hidden states up (T5's position bias from its first
        block) would not: its training then runs every layer."""
        batch = self.backbone.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        prompts = prompt(len(texts))
        try:
            skipped = prompted_features(self.backbone, prompts, ids, mask, self.batch(texts, mask))
        except Exception:
            return False  # the narrowed layer list is not what this model's forward expects
        full = prompted_features(self.backbone, prompts, ids, mask)
        tolerance = 1e-3 if self.backbone.dtype == torch.float32 else 3e-2
        scale = float(full.abs().max())
        return bool((skipped - full).abs().max() <= tolerance * max(scale, 1.0))


def _new_head(hidden: int, classes: int, generator: torch.Generator) -> nn.Linear:
    # Built on the meta device so that nn.Linear's own initialisation does not draw from the
    # global random state; the weights then come from the task's generator.
    head = nn.Linear(hidden, classes, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    return head


@torch.no_grad()
def _correct(
    backbone: Backbone,
    prompt: SoftPrompt,
    head: nn.Linear,
    task: Task,
    examples: Sequence[tuple[str, str]],
    batch_size: int,
    lower: _LowerStates | None = None,
) -> tuple[int, int]:
    """Examples labelled right, and examples seen."""
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        texts = [text for text, _ in chunk]
        batch = backbone.tokenize(texts)
        features = prompted_features(
            backbone,
            prompt(len(chunk)),
            batch["input_ids"],
            batch["attention_mask"],
            None if lower is None else lower.batch(texts, batch["attention_mask"]),
        )
        predicted = head(features).argmax(1)
        gold = torch.tensor(
            [task.label_index(label) for _, label in chunk], device=head.weight.device
        )
        correct += int((predicted == gold).sum())
    return correct, len(examples)
