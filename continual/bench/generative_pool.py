"""The prompt pool in the generative benchmark: routed, or with each input's task given.

A task's entry (its soft prompt) depends only on its own data and seed, so it is trained once
(`continual.learner.train_task`, as `PromptPool.learn` trains it) and added to both pools, each
fitting its own selector state. Answers are shared per (task, text) too: only routing is
recomputed as a pool grows.
"""

from __future__ import annotations

import time

import numpy as np

from ..learner import TrainingConfig, train_task
from ..pool import PromptPool
from .generative_corpora import GenerativeTask
from .generative_methods import Answers, GenerativeContext, GenerativeMethod
from .methods import routed_tasks
from .results import Cost


class PoolMethod(GenerativeMethod):
    """The pool under the default selector, or (``oracle``) told each input's task."""

    def __init__(self, context: GenerativeContext, *, oracle: bool) -> None:
        settings = context.config.settings
        super().__init__(context.backbone, settings, context.progress)
        self.context = context
        self.oracle = oracle
        self.training = TrainingConfig(
            epochs=settings.epochs, batch_size=settings.batch_size, prompt_lr=settings.prompt_lr
        )
        self.pool = PromptPool(
            context.backbone,
            prompt_length=settings.prompt_length,
            selector="oracle" if oracle else None,
            training=self.training,
        )

    def learn(self, task: GenerativeTask) -> None:
        trained = self.context.pool_entries.get(task.name)
        if trained is None:
            trained = train_task(
                self.backbone,
                task,
                self.settings.prompt_length,
                self.training,
                seed=self.settings.seed,
                progress=self.progress,
            )
            self.context.pool_entries[task.name] = trained
        self.train_seconds += trained.stats["train_seconds"]
        self.pool.add_trained(task, trained, seed=self.settings.seed)

    def answer(self, task: GenerativeTask, texts: list[str]) -> Answers:
        names = routed_tasks(self.pool, texts, task.name if self.oracle else None)
        answers = self.context.pool_answers
        missing = sorted(
            {
                (name, text)
                for name, text in zip(names, texts)
                if name and (name, text) not in answers
            }
        )
        if missing:
            started = time.perf_counter()
            predicted = self.pool.predict(
                [text for _, text in missing],
                tasks=[name for name, _ in missing],
                batch_size=self.settings.eval_batch_size,
            )
            self.generate_seconds += time.perf_counter() - started
            outputs = [prediction.output or "" for prediction in predicted]
            self.count_tokens(outputs)
            answers.update(zip(missing, outputs))
        return Answers(
            [answers[(name, text)] if name else "" for name, text in zip(names, texts)],
            routed_to=None if self.oracle else names,
        )

    def cost(self) -> Cost:
        return Cost(
            max(entry.trainable_parameters for entry in self.pool.entries),
            float(np.mean(self.pool.bytes_per_task())),
        )
