"""Micro-batching: concurrent requests share forward passes, fairly.

Each request's texts join a round-robin queue, and a batch takes one text from each waiting
request in turn until it holds ``max_batch`` texts or ``max_batch_tokens`` tokens (as the
backbone's tokenizer counts them, at most its ``max_length`` a text), waiting at most
``max_wait`` seconds for company. A one-text request sent while a 256-text one runs is answered
after the batch in progress and its own. A batch whose prediction fails is retried one request
at a time, so a failure reaches only the request that caused it.
"""

import asyncio
import contextlib
import copy
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContinualError
from ..tokens import CHARACTERS_PER_TOKEN


@dataclass(eq=False)
class _Job:
    """One request: its texts, their token bounds, and the answers found so far."""

    pool: Any
    texts: list[str]
    task: str | None
    min_score: float | None
    refuse: float | None
    future: asyncio.Future
    tokens: list[int]
    taken: int = 0  # texts already put into a batch
    answers: list = field(default_factory=list)
    enqueued: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.texts)


def token_counts(tokenizer, texts: list[str], max_length: int) -> list[int]:
    """How many tokens each text becomes, at most ``max_length`` (the backbone truncates there).

    A text of more than `CHARACTERS_PER_TOKEN` characters a token is not tokenized here (that
    would cost as much as a 20,000-character text's whole tokenization): it counts as
    ``max_length``, a bound.
    """
    counts = [max_length] * len(texts)
    bound = CHARACTERS_PER_TOKEN * max_length
    short = [number for number, text in enumerate(texts) if len(text) <= bound]
    if short:
        encoded = tokenizer(
            [texts[number] for number in short], truncation=True, max_length=max_length
        )["input_ids"]
        for number, ids in zip(short, encoded):
            counts[number] = len(ids)
    return counts


class MicroBatcher:
    """Shares `PromptPool.predict` calls among concurrent requests, fairly.

    Requests wait in a round-robin queue. A batch takes the next text of each waiting request in
    turn until it holds ``max_batch`` texts or ``max_batch_tokens`` tokens (`token_counts`; a
    batch always takes at least one text), waiting at most ``max_wait`` seconds for more. So a
    large request is split into bounded batches, and a small one sent meanwhile joins the next
    batch. Predictions run on one worker thread, so the event loop keeps accepting requests;
    tokens are counted on another, with a tokenizer of its own (a fast tokenizer must not be
    called from two threads at once).
    """

    def __init__(
        self, max_batch: int = 64, max_wait: float = 0.005, max_batch_tokens: int = 256
    ) -> None:
        if max_batch < 1:
            raise ContinualError(f"max_batch must be at least 1, got {max_batch}")
        if max_batch_tokens < 1:
            raise ContinualError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        if max_wait < 0:
            raise ContinualError(f"max_wait must be 0 or more, got {max_wait}")
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait
        self.batches = 0
        self.rows = 0
        self.retries = 0
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        import torch

        # The worker thread runs with the thread count set where the batcher was made.
        self._executor = ThreadPoolExecutor(
            1,
            thread_name_prefix="continual-predict",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._counter = ThreadPoolExecutor(1, thread_name_prefix="continual-count")
        self._tokenizers: dict[int, Any] = {}  # backbone id -> the counting thread's copy

    def _count(self, backbone, texts: list[str]) -> list[int]:
        tokenizer = self._tokenizers.get(id(backbone))
        if tokenizer is None:
            tokenizer = self._tokenizers[id(backbone)] = copy.deepcopy(backbone.tokenizer)
        return token_counts(tokenizer, texts, backbone.max_length)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
        self._counter.shutdown(wait=True)

    async def submit(
        self,
        pool,
        texts: list[str],
        task: str | None,
        min_score: float | None,
        refuse: float | None = None,
    ) -> list:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        tokens = await loop.run_in_executor(self._counter, self._count, pool.backbone, texts)
        self._pending.append(_Job(pool, texts, task, min_score, refuse, future, tokens))
        assert self._wakeup is not None, "start() the batcher first"
        self._wakeup.set()
        return await future

    def _waiting_rows(self) -> int:
        return sum(len(job.texts) - job.taken for job in self._pending)

    def _next_batch(self) -> list[tuple[_Job, int]]:
        """(request, text number) pairs: one text per waiting request in turn, within bounds."""
        rows: list[tuple[_Job, int]] = []
        tokens = 0
        while self._pending and len(rows) < self.max_batch:
            job = self._pending[0]
            if job.future.done():  # cancelled by its client: drop what is left of it
                self._pending.popleft()
                continue
            cost = job.tokens[job.taken]
            if rows and tokens + cost > self.max_batch_tokens:
                break
            rows.append((job, job.taken))
            tokens += cost
            job.taken += 1
            self._pending.popleft()
            if job.taken < len(job.texts):
                self._pending.append(job)  # its next text waits for the others' turn
        return rows

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        assert wakeup is not None, "start() the batcher first"
        while True:
            while not self._pending:
                wakeup.clear()
                await wakeup.wait()
            deadline = loop.time() + self.max_wait
            while self._waiting_rows() < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            rows = self._next_batch()
            if not rows:
                continue
            self.batches += 1
            self.rows += len(rows)
            outcomes = await loop.run_in_executor(self._executor, self._predict, rows)
            for job, outcome in outcomes.items():
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                    job.taken = len(job.texts)  # the rest of it is not predicted
                    with contextlib.suppress(ValueError):
                        self._pending.remove(job)
                elif all(answer is not None for answer in job.answers):
                    job.future.set_result(job.answers)

    def _predict(self, rows: list[tuple[_Job, int]]) -> dict[_Job, BaseException | None]:
        """Predict ``rows`` into their requests' answers: one `predict` call per pool snapshot
        (normally just one); a call that fails is made again for each request alone.

        Returns each request's outcome: None, or the error its own rows raised.
        """
        outcomes: dict[_Job, BaseException | None] = {job: None for job, _ in rows}
        groups: dict[int, list[tuple[_Job, int]]] = {}
        for job, number in rows:
            groups.setdefault(id(job.pool), []).append((job, number))
        for group in groups.values():
            try:
                _predict_rows(group)
            except Exception as error:
                requests = list(dict.fromkeys(job for job, _ in group))
                if len(requests) == 1:
                    outcomes[requests[0]] = error
                    continue
                self.retries += 1
                for job in requests:  # one at a time: a failure reaches only its own request
                    try:
                        _predict_rows([row for row in group if row[0] is job])
                    except Exception as error:
                        outcomes[job] = error
        return outcomes


def _predict_rows(rows: list[tuple[_Job, int]]) -> None:
    """One `predict` call for ``rows`` (all on one pool), answers written into their requests."""
    pool = rows[0][0].pool
    predictions = pool.predict(
        [job.texts[number] for job, number in rows],
        tasks=[job.task for job, _ in rows],
        min_score=[job.min_score for job, _ in rows],
        refuse=[job.refuse for job, _ in rows],
        batch_size=len(rows),
    )
    for (job, number), prediction in zip(rows, predictions):
        job.answers[number] = prediction
