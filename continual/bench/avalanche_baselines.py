"""Avalanche's Naive, EWC, LwF and Replay strategies on full fine-tuning, as benchmark methods.

These are baselines of the benchmark harness only; the library's Avalanche bridge is
`continual.integrations.avalanche`.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

# Importing Avalanche warns that no QP solver is installed (only its GEM strategy needs one).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
    from avalanche.benchmarks import tensors_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier
from avalanche.training import EWC, LwF, Naive, Replay
from torch import nn

from ..backbone import Backbone
from ..data import Example, Task
from ..errors import ContinualError, TaskDataError
from ..integrations.avalanche.convert import attention_mask, encode_texts, pad_token_id
from ..metrics import Score
from ..progress import Progress
from .results import Cost

STRATEGIES = ("naive", "ewc", "lwf", "replay")


class EncoderClassifier(nn.Module):
    """A trainable encoder, mean-pooled, under Avalanche's `IncrementalClassifier` head.

    Takes right- or left-padded token ids; the attention mask is ``ids != pad_id``.
    """

    def __init__(self, encoder: nn.Module, backbone: Backbone, pad_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        # Inputs and pooling as the frozen backbone does them (token types only where the model
        # has them, mean or last-token pooling); the backbone itself is not a submodule.
        self._extra_inputs = backbone.extra_inputs
        self._pool = backbone.pool
        self.pad_id = pad_id
        hidden_size = backbone.hidden_size
        # Grows when an experience brings class ids beyond its width; masks never-seen classes.
        self.classifier = IncrementalClassifier(hidden_size, initial_out_features=2)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(ids, self.pad_id)
        keep = mask.bool().any(0)  # drop all-padding columns: less compute, same result
        ids, mask = ids[:, keep], mask[:, keep]
        hidden = self.encoder(
            input_ids=ids, attention_mask=mask, **self._extra_inputs(mask)
        ).last_hidden_state
        return self._pool(hidden, mask)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(ids))


class _ProgressBar(SupervisedPlugin):
    """Progress over one experience's training iterations (a bar, or a line per epoch)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.bar: Progress | None = None

    def before_training_epoch(self, strategy, **kwargs) -> None:
        # Created at the first epoch: by then plugins (Replay) have replaced the dataloader.
        if self.bar is None:
            try:
                total = strategy.train_epochs * len(strategy.dataloader)
            except TypeError:
                total = None
            self.bar = Progress(total, self.label)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if self.bar is not None:
            self.bar.update(1, loss=f"{strategy.loss.item():.3f}")

    def after_training_epoch(self, strategy, **kwargs) -> None:
        if self.bar is not None:
            self.bar.checkpoint(f"epoch {strategy.clock.train_exp_epochs + 1}")

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_REISSUED: dict = {}


@contextmanager
def _without_avalanche_deprecations() -> Iterator[None]:
    """Drop the deprecation warnings Avalanche 0.6.0 raises about its own internal calls.

    (Replay's plugin calls a deprecated storage-policy method.) Avalanche's decorator resets the
    warning filters itself, so filtering does not work: warnings are recorded and every other
    one is re-issued.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    for warning in caught:
        # Also torch's indexing deprecation, raised from EWC's own parameter bookkeeping.
        internal = issubclass(warning.category, (DeprecationWarning, UserWarning)) and (
            "/avalanche/" in warning.filename.replace("\\", "/")
        )
        if not internal:
            # A registry of our own: each re-issued warning shows once, as by default.
            warnings.warn_explicit(
                warning.message,
                warning.category,
                warning.filename,
                warning.lineno,
                registry=_REISSUED,
            )


class AvalancheMethod:
    """Avalanche's Naive, EWC, LwF or Replay on full fine-tuning, as a benchmark `Method`.

    A deep copy of the backbone's encoder is fine-tuned whole, with mean-pooled features under
    Avalanche's `IncrementalClassifier`. Tasks arrive one at a time through `learn`; each becomes
    a one-experience Avalanche benchmark whose class ids continue from the previous tasks' (the
    global class ids are assigned in arrival order) and whose task label is 0 (class-incremental:
    one head over all classes, no task ids). Evaluation is class-incremental too: argmax over
    every class seen so far must be the input's (task, label) class.

    Args:
        strategy: ``"naive"``, ``"ewc"``, ``"lwf"`` or ``"replay"``.
        backbone: its encoder is copied (the backbone itself stays frozen and untouched).
        epochs, batch_size: training epochs per task and mini-batch size.
        lr, head_lr: AdamW learning rates of the encoder and of the classifier head (two
            parameter groups; Avalanche keeps a grown head in the head's group).
        ewc_lambda: EWC penalty weight ("separate" mode: one Fisher per task). 1000 is a usual
            order of magnitude for Fisher estimates from mean-reduced losses; not tuned here.
        lwf_alpha, lwf_temperature: LwF distillation weight and temperature.
        mem_size: Replay buffer size (examples, balanced over experiences).
        seed: seeds the head, the data order and dropout.
        progress: show a progress bar per task.
        device: where the model trains.
    """

    def __init__(
        self,
        strategy: str,
        backbone: Backbone,
        *,
        epochs: int = 3,
        batch_size: int = 32,
        lr: float = 5e-5,
        head_lr: float = 1e-2,
        ewc_lambda: float = 1000.0,
        lwf_alpha: float = 1.0,
        lwf_temperature: float = 2.0,
        mem_size: int = 200,
        seed: int = 0,
        progress: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ContinualError(
                f"unknown Avalanche strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
            )
        self.name = strategy
        self.backbone = backbone
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.train_seconds = 0.0
        # The classifier's initialisation draws from the global generator: fork it, seeded.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build(
                strategy,
                backbone,
                epochs,
                batch_size,
                lr,
                head_lr,
                ewc_lambda,
                lwf_alpha,
                lwf_temperature,
                mem_size,
                progress,
            )
        self.classes: list[tuple[str, str]] = []  # (task, label) of each global class id
        self._offsets: dict[str, int] = {}  # task name -> its first global class id

    def _build(
        self,
        strategy: str,
        backbone: Backbone,
        epochs: int,
        batch_size: int,
        lr: float,
        head_lr: float,
        ewc_lambda: float,
        lwf_alpha: float,
        lwf_temperature: float,
        mem_size: int,
        progress: bool,
    ) -> None:
        # Fine-tuned in float32 whatever precision the frozen backbone was loaded in.
        encoder = copy.deepcopy(backbone.model).to(torch.float32)
        for parameter in encoder.parameters():
            parameter.requires_grad_(True)
        self.model = EncoderClassifier(encoder, backbone, pad_token_id(backbone.tokenizer))
        optimizer = torch.optim.AdamW(
            [
                {"params": list(self.model.encoder.parameters()), "lr": lr},
                {"params": list(self.model.classifier.parameters()), "lr": head_lr},
            ],
            weight_decay=0.0,
        )
        common = dict(
            model=self.model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=batch_size,
            train_epochs=epochs,
            eval_mb_size=64,
            device=self.device,
            plugins=[_ProgressBar(f"{strategy}")] if progress else None,
            evaluator=None,  # metrics come from evaluate(); no Avalanche logging
        )
        with warnings.catch_warnings():
            # Logging nothing is deliberate here: evaluate() computes the benchmark's numbers.
            warnings.filterwarnings("ignore", message="No loggers specified")
            if strategy == "naive":
                self.strategy = Naive(**common)
            elif strategy == "ewc":
                self.strategy = EWC(ewc_lambda=ewc_lambda, mode="separate", **common)
            elif strategy == "lwf":
                self.strategy = LwF(alpha=lwf_alpha, temperature=lwf_temperature, **common)
            else:
                self.strategy = Replay(mem_size=mem_size, **common)

    def _tensors(self, task: Task, examples: Sequence[Example]) -> tuple[torch.Tensor, ...]:
        offset = self._offsets[task.name]
        ids = encode_texts(
            self.backbone.tokenizer, [text for text, _ in examples], self.backbone.max_length
        )
        targets = torch.tensor(
            [offset + task.label_index(label) for _, label in examples], dtype=torch.long
        )
        return ids, targets

    def learn(self, task: Task) -> None:
        """Fine-tune on ``task`` (only its training data) with the Avalanche strategy."""
        if task.name in self._offsets:
            raise TaskDataError(f"task {task.name!r} was already learned")
        self._offsets[task.name] = len(self.classes)
        self.classes += [(task.name, label) for label in task.labels]
        train = self._tensors(task, task.train)
        # Avalanche benchmarks need a test stream; it is never used (evaluate() has its own loop).
        benchmark = tensors_benchmark(train_tensors=[train], test_tensors=[train], task_labels=[0])
        if self.strategy.plugins:
            for plugin in self.strategy.plugins:
                if isinstance(plugin, _ProgressBar):
                    plugin.label = f"{self.name} {task.name}"
        start = time.perf_counter()
        # Seeded per task, on a forked generator: the data order and dropout do not depend on
        # what ran before, and nothing after depends on this.
        with torch.random.fork_rng(devices=[]), _without_avalanche_deprecations():
            torch.manual_seed(self.seed + len(self._offsets))
            self.strategy.train(benchmark.train_stream[0], eval_streams=[])
        self.train_seconds += time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self, task: Task) -> Score:
        """Class-incremental accuracy (%) on ``task``'s test split; 0 for a task not learned."""
        if not task.test:
            raise TaskDataError(f"task {task.name!r}: no test examples")
        if task.name not in self._offsets:
            # Its classes have no outputs yet: nothing can be right.
            return Score(task=task.name, examples=len(task.test), accuracy=0.0)
        ids, targets = self._tensors(task, task.test)
        self.model.eval()
        correct = 0
        for start in range(0, len(ids), 64):
            logits = self.model(ids[start : start + 64].to(self.device))
            correct += int((logits.argmax(1).cpu() == targets[start : start + 64]).sum())
        return Score(task=task.name, examples=len(ids), accuracy=100.0 * correct / len(ids))

    def cost(self) -> Cost:
        """Trainable parameters, and bytes stored per task.

        As for the fine-tuning baselines, the whole fine-tuned model is stored after every task
        (4 bytes per parameter); EWC also keeps one Fisher estimate and one copy of the
        parameters per task. Replay's fixed-size buffer and LwF's one teacher copy do not grow
        with the number of tasks and are not counted.
        """
        trainable = sum(p.numel() for p in self.model.parameters())
        per_task = 4 * trainable
        if self.name == "ewc":
            per_task += 2 * 4 * trainable
        return Cost(trainable, float(per_task))
