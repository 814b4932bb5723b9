"""Serve a pool over HTTP: one loaded backbone, every task, micro-batched forward passes.

    continual serve POOL [--host 127.0.0.1] [--port 8000] [--max-batch 64] [--max-wait-ms 5]

Endpoints:

- ``POST /predict`` ``{"texts": [...], "task": null | "name", "min_score": null | x,
  "refuse": null | share}`` → ``{"predictions": [{"text", "task", "label", "output",
  "score"}, ...]}`` in input order (``output``: a text-to-text task's generated answer). ``task`` skips routing; ``min_score`` refuses routed texts whose routing score is
  below it, ``refuse`` those that match their task worse than that share (0.01 to 0.2) of its
  held-out inputs (task and label null; see `PromptPool.predict`).
- ``GET /tasks`` → ``{"tasks": [{"name", "labels"}, ...]}``; ``GET /health`` → 200.

Concurrent requests are queued and answered together: the first waits at most ``max_wait``
seconds for others, up to ``max_batch`` texts, and the whole batch, whatever mix of tasks and
routed texts it holds, goes through one `PromptPool.predict` call. Bad requests get a 4xx with
``{"error": "<one line>"}``. A background thread polls the pool's manifest; when another process
adds or removes a task, the entries are reloaded on the same backbone and the served pool is
swapped as one reference, so requests in flight finish on the pool they started on.

FastAPI and uvicorn are imported only when an app is built, so ``import continual`` stays light.
"""

import asyncio
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ContinualError, PoolFormatError
from .files import MAX_MANIFEST_BYTES, read_regular_file
from .storage import MANIFEST

log = logging.getLogger("continual.serve")


class RequestError(Exception):
    """A bad request: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


# -- the served pool, reloaded when the pool on disk changes ---------------------------------------
class PoolHolder:
    """Holds the pool being served and swaps it when the manifest on disk changes.

    Reloading reads the manifest and the files of tasks added since (`PromptPool.reload`); the
    backbone, the entries still named and the selector's pooled statistics are reused. A reload
    that fails (a save half-seen, a corrupt file) keeps the current pool and is retried next
    poll.
    """

    def __init__(self, path: str | os.PathLike, load: Callable[[], Any]) -> None:
        self.path = Path(path)
        self.reloads = 0
        self.reload_error: str | None = None
        # The manifest is read before the pool it names: a save landing in between then
        # shows as a change at the first poll instead of passing unseen.
        self._signature = self._stat()
        self._digest = self._read_digest()
        self.pool = load()
        self._lock = threading.Lock()

    def _stat(self) -> tuple | None:
        try:
            info = (self.path / MANIFEST).stat()
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _read_digest(self) -> str | None:
        # Through the bounded reader: a manifest swapped for a FIFO or a link never blocks or
        # misleads the poller (it keeps the pool it serves).
        try:
            data = read_regular_file(
                self.path / MANIFEST,
                limit=MAX_MANIFEST_BYTES,
                error=PoolFormatError,
                what="manifest",
                follow_symlinks=False,
            )
        except (OSError, ContinualError):
            return None
        return hashlib.sha256(data).hexdigest()

    def check(self) -> bool:
        """Reload if the manifest changed; True when a new pool is now served."""
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return False
            digest = self._read_digest()
            if digest is None:
                self.reload_error = f"{self.path / MANIFEST}: cannot read the manifest"
                return False
            if digest == self._digest:
                self._signature = signature
                return False
            try:
                pool = self.pool.reload(self.path)
            except ContinualError as error:
                self.reload_error = " ".join(str(error).split())
                log.warning("keeping the served pool; reload failed: %s", self.reload_error)
                return False
            before = set(self.pool.tasks)
            self.pool = pool  # one reference: requests in flight keep the pool they started on
            self._signature, self._digest = signature, digest
            self.reload_error = None
            self.reloads += 1
            log.warning(
                "reloaded %s: tasks %s (added %s, removed %s)",
                self.path,
                pool.tasks,
                sorted(set(pool.tasks) - before),
                sorted(before - set(pool.tasks)),
            )
            return True

    def poll_forever(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self.check()
            except Exception as error:
                self.reload_error = " ".join(str(error).split())
                log.exception("pool poll failed")


# -- micro-batching ------------------------------------------------------------------------------
@dataclass
class _Job:
    pool: Any
    texts: list[str]
    task: str | None
    min_score: float | None
    refuse: float | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects concurrent requests into shared `PromptPool.predict` calls.

    A batch starts with the oldest waiting request, takes others while they fit in
    ``max_batch`` texts, and waits at most ``max_wait`` seconds for more. Predictions run on one
    worker thread, so the event loop keeps accepting requests meanwhile.
    """

    def __init__(self, max_batch: int = 64, max_wait: float = 0.005) -> None:
        if max_batch < 1:
            raise ContinualError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ContinualError(f"max_wait must be 0 or more, got {max_wait}")
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.batches = 0
        self.rows = 0
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

    async def submit(
        self,
        pool,
        texts: list[str],
        task: str | None,
        min_score: float | None,
        refuse: float | None = None,
    ) -> list:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(pool, texts, task, min_score, refuse, future))
        assert self._wakeup is not None, "start() the batcher first"
        self._wakeup.set()
        return await future

    def _waiting_rows(self) -> int:
        return sum(len(job.texts) for job in self._pending)

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
            batch = [self._pending.popleft()]
            rows = len(batch[0].texts)
            while self._pending and rows + len(self._pending[0].texts) <= self.max_batch:
                job = self._pending.popleft()
                batch.append(job)
                rows += len(job.texts)
            batch = [job for job in batch if not job.future.done()]  # drop cancelled requests
            if not batch:
                continue
            self.batches += 1
            self.rows += rows
            outcomes = await loop.run_in_executor(self._executor, self._predict, batch)
            for job, outcome in zip(batch, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _predict(self, batch: list[_Job]) -> list:
        """One `predict` call per pool snapshot in the batch (normally just one)."""
        outcomes: list = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for number, job in enumerate(batch):
            groups.setdefault(id(job.pool), []).append(number)
        for numbers in groups.values():
            pool = batch[numbers[0]].pool
            texts, tasks, thresholds, shares = [], [], [], []
            for number in numbers:
                job = batch[number]
                texts += job.texts
                tasks += [job.task] * len(job.texts)
                thresholds += [job.min_score] * len(job.texts)
                shares += [job.refuse] * len(job.texts)
            try:
                predictions = pool.predict(
                    texts,
                    tasks=tasks,
                    min_score=thresholds,
                    refuse=shares,
                    batch_size=max(len(texts), 1),
                )
            except Exception as error:
                for number in numbers:
                    outcomes[number] = error
                continue
            start = 0
            for number in numbers:
                count = len(batch[number].texts)
                outcomes[number] = predictions[start : start + count]
                start += count
        return outcomes


# -- request parsing -------------------------------------------------------------------------------
def parse_predict_request(body: bytes, pool, *, max_texts: int, max_chars: int) -> tuple:
    """``(texts, task, min_score, refuse)`` from a /predict body, or `RequestError`."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RequestError(400, f"malformed JSON: {error}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object with a 'texts' list")
    unknown = sorted(set(payload) - {"texts", "task", "min_score", "refuse"})
    if unknown:
        raise RequestError(
            422, f"unknown field(s) {unknown}; expected texts, task, min_score, refuse"
        )
    if "texts" not in payload:
        raise RequestError(422, "missing field 'texts' (a list of strings)")
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, "field 'texts' must be a list of strings")
    if not texts:
        raise RequestError(422, "field 'texts' is empty; give at least one text")
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; at most {max_texts}")
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{number}] is a {type(text).__name__}, not a string")
        if not text.strip():
            raise RequestError(422, f"texts[{number}] is empty")
        if len(text) > max_chars:
            raise RequestError(
                413, f"texts[{number}] has {len(text)} characters; at most {max_chars}"
            )
    task = payload.get("task")
    if task is not None:
        if not isinstance(task, str):
            raise RequestError(422, "field 'task' must be a task name or null")
        if task not in pool.tasks:
            raise RequestError(404, f"unknown task {task!r}; the pool has {pool.tasks}")
    min_score = payload.get("min_score")
    if min_score is not None:
        if (
            isinstance(min_score, bool)
            or not isinstance(min_score, (int, float))
            or not math.isfinite(min_score)
        ):
            raise RequestError(422, "field 'min_score' must be a finite number or null")
        min_score = float(min_score)
    refuse = payload.get("refuse")
    if refuse is not None and task is None:  # a named task is never refused
        try:
            pool.refusal_thresholds(refuse)  # the share's range, and every task calibrated
        except ContinualError as error:
            raise RequestError(422, f"field 'refuse': {error}") from None
        refuse = float(refuse)
    elif refuse is not None and (isinstance(refuse, bool) or not isinstance(refuse, (int, float))):
        raise RequestError(422, "field 'refuse' must be a share from 0.01 to 0.2, or null")
    return texts, task, min_score, refuse


# -- the app ---------------------------------------------------------------------------------------
def create_app(
    pool_path: str | os.PathLike,
    *,
    backbone=None,
    device: str = "cpu",
    dtype: str | None = None,
    max_batch: int = 64,
    max_wait: float = 0.005,
    max_texts: int = 256,
    max_chars: int = 20_000,
    max_body_bytes: int = 8 * 1024 * 1024,
    poll_interval: float = 1.0,
):
    """The FastAPI app serving the pool at ``pool_path``; starts nothing.

    The pool is loaded now (errors surface before any port is bound), on ``backbone`` if given
    (it must be the one the pool was built on), else on the backbone its manifest names.
    Batching and the pool poller start with the app's lifespan (when a server runs it).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from .pool import PromptPool

    if max_texts < 1:
        raise ContinualError(f"max_texts must be at least 1, got {max_texts}")
    if poll_interval <= 0:
        raise ContinualError(f"poll_interval must be positive, got {poll_interval}")
    holder = PoolHolder(
        pool_path, lambda: PromptPool.load(pool_path, backbone, device=device, dtype=dtype)
    )
    batcher = MicroBatcher(max_batch=max_batch, max_wait=max_wait)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        poller = threading.Thread(
            target=holder.poll_forever,
            args=(poll_interval, stop),
            name="continual-pool-poller",
            daemon=True,
        )
        poller.start()
        try:
            yield
        finally:
            stop.set()
            await batcher.stop()
            poller.join(timeout=5)

    app = FastAPI(title="continual", lifespan=lifespan)
    app.state.holder = holder
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(message.split())}, status_code=status)

    @app.post("/predict")
    async def predict(request: Request):
        pool = holder.pool  # this request's snapshot, whatever reloads happen meanwhile
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return error(413, f"request body over {max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            texts, task, min_score, refuse = parse_predict_request(
                body, pool, max_texts=max_texts, max_chars=max_chars
            )
        except RequestError as bad:
            return error(bad.status, bad.message)
        try:
            predictions = await batcher.submit(pool, texts, task, min_score, refuse)
        except ContinualError as failure:  # e.g. every task was removed from the pool
            return error(409, str(failure))
        except Exception as failure:
            log.exception("prediction failed")
            return error(500, f"prediction failed: {type(failure).__name__}: {failure}")
        return {"predictions": [prediction.to_dict() for prediction in predictions]}

    @app.get("/tasks")
    async def tasks():
        pool = holder.pool
        return {"tasks": [{"name": entry.name, "labels": entry.labels} for entry in pool.entries]}

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "tasks": len(holder.pool.entries),
            "reloads": holder.reloads,
            "reload_error": holder.reload_error,
            "batches": batcher.batches,
            "rows": batcher.rows,
        }

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as failure:
        sock.close()
        raise ContinualError(f"cannot listen on {host}:{port}: {failure.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def build_server(app, sock: socket.socket):
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[sock])``."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    return uvicorn.Server(config)


def run_server(
    pool_path: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    **settings,
) -> None:
    """Load the pool, bind ``host:port`` and serve until interrupted.

    ``threads`` sets torch's intra-op threads for the forward passes (default: torch's own);
    on a machine shared with other busy processes, 1 avoids threads spinning against them.
    """
    import sys

    if threads is not None:
        if threads < 1:
            raise ContinualError(f"threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    app = create_app(pool_path, **settings)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    pool = app.state.holder.pool
    print(
        f"serving {pool_path} ({len(pool.tasks)} task(s): {', '.join(pool.tasks)}) on "
        f"http://{host}:{bound}",
        file=sys.stderr,
        flush=True,
    )
    build_server(app, sock).run(sockets=[sock])
