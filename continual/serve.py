"""Serve a pool over HTTP: one loaded backbone, every task, micro-batched forward passes.

    continual serve POOL [--host 127.0.0.1] [--port 8000] [--max-batch 64]
        [--max-batch-tokens 256] [--max-wait-ms 5] [--docs]

Endpoints:

- ``POST /predict`` ``{"texts": [...], "task": null | "name", "min_score": null | x,
  "refuse": null | share}`` → ``{"predictions": [{"text", "task", "label", "output",
  "score"}, ...]}`` in input order (``output``: a text-to-text task's generated answer).
  ``task`` skips routing; ``min_score`` refuses routed texts whose routing score is below it,
  ``refuse`` those that match their task worse than that share (0.01 to 0.2) of its held-out
  inputs (task and label null; see `PromptPool.predict`).
- ``GET /tasks`` → ``{"tasks": [{"name", "labels"}, ...]}``; ``GET /health`` → 200. Both answer
  ``HEAD`` too. ``/docs`` and ``/redoc`` only with ``--docs`` (served from the installed
  fastapi-offline package: no script from a CDN).

Every request is checked whole before it is queued (valid UTF-8 texts without lone surrogates,
the size limits, numbers in range, a task name that may exist): a bad request gets a 4xx with
``{"error": "<one line>"}`` (names cut to 80 characters) and never reaches a batch.

Concurrent requests share forward passes fairly: each request's texts join a round-robin queue,
and a batch takes one text from each waiting request in turn until it holds ``max_batch`` texts
or ``max_batch_tokens`` tokens (as the backbone's tokenizer counts them, at most its
``max_length`` a text), waiting at most ``max_wait`` seconds for company. A one-text request
sent while a 256-text one runs is answered after the batch in progress and its own. A batch
whose prediction fails is retried one request at a time, so a failure reaches only the request
that caused it.

The connection itself is bounded: request headers over 16 KiB get 431, headers not complete
within 10 s or a body not complete within 30 s get 408, and the connection is closed.

A background thread polls the pool's manifest; when another process adds or removes a task, the
entries are reloaded on the same backbone and the served pool is swapped as one reference, so
requests in flight finish on the pool they started on.

FastAPI and uvicorn are imported only when an app is built, so ``import continual`` stays light.
"""

import asyncio
import contextlib
import copy
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

# The connection's limits (see the module docstring).
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
MAX_HEADER_BYTES = 16 * 1024

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
            if digest == self._digest:  # the served pool's manifest, e.g. restored after a bad one
                self._signature = signature
                self.reload_error = None
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
    from .backbone import CHARACTERS_PER_TOKEN

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


# -- request parsing -------------------------------------------------------------------------------
def parse_predict_request(body: bytes, pool, *, max_texts: int, max_chars: int) -> tuple:
    """``(texts, task, min_score, refuse)`` from a /predict body, or `RequestError`.

    Everything a batch could fail on is checked here, so a bad request fails alone: texts that
    are strings, non-empty, within ``max_chars`` and encodable as UTF-8 (no lone surrogate
    from a ``\\ud800`` escape), numbers that are finite floats in range, a valid task name.
    """
    from .format import check_task_name, pool_has, quote_name, some_names
    from .routing import CALIBRATION_LEVELS

    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RequestError(400, f"malformed JSON: {str(error)[:200]}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object with a 'texts' list")
    unknown = sorted(set(payload) - {"texts", "task", "min_score", "refuse"})
    if unknown:
        raise RequestError(
            422, f"unknown field(s) {some_names(unknown)}; expected texts, task, min_score, refuse"
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
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RequestError(
                422,
                f"texts[{number}] is not valid UTF-8: a lone surrogate "
                f"(U+{ord(text[error.start]):04X}) at character {error.start}",
            ) from None
    task = payload.get("task")
    if task is not None:
        try:
            check_task_name(task, "field 'task'")
        except ContinualError as error:
            raise RequestError(422, str(error)) from None
        if task not in pool.tasks:
            raise RequestError(404, f"unknown task {quote_name(task)}; {pool_has(pool.tasks)}")
    min_score = _number(payload.get("min_score"), "min_score", "a finite number or null")
    refuse = _number(payload.get("refuse"), "refuse", "a share from 0.01 to 0.2, or null")
    if refuse is not None:
        low, high = CALIBRATION_LEVELS[0], CALIBRATION_LEVELS[-1]
        if not low <= refuse <= high:  # checked even where a named task is never refused
            raise RequestError(422, f"field 'refuse' must be a share from {low} to {high}")
        if task is None:
            try:
                pool.refusal_thresholds(refuse)  # every task calibrated
            except ContinualError as error:
                raise RequestError(422, f"field 'refuse': {error}") from None
    return texts, task, min_score, refuse


def _number(value: object, name: str, expected: str) -> float | None:
    """``value`` as a finite float, None for null, or `RequestError` (a bool is no number; an
    integer too large for a float is refused, not overflowed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(422, f"field {name!r} must be {expected}")
    try:
        number = float(value)
    except OverflowError:
        raise RequestError(422, f"field {name!r} must be {expected} (too large)") from None
    if not math.isfinite(number):
        raise RequestError(422, f"field {name!r} must be {expected}")
    return number


# -- the app ---------------------------------------------------------------------------------------
def create_app(
    pool_path: str | os.PathLike,
    *,
    backbone=None,
    device: str = "cpu",
    dtype: str | None = None,
    max_batch: int = 64,
    max_batch_tokens: int = 256,
    max_wait: float = 0.005,
    max_texts: int = 256,
    max_chars: int = 20_000,
    max_body_bytes: int = 8 * 1024 * 1024,
    poll_interval: float = 1.0,
    docs: bool = False,
):
    """The FastAPI app serving the pool at ``pool_path``; starts nothing.

    The pool is loaded now (errors surface before any port is bound), on ``backbone`` if given
    (it must be the one the pool was built on), else on the backbone its manifest names.
    Batching and the pool poller start with the app's lifespan (when a server runs it).
    ``docs`` serves ``/docs``, ``/redoc`` and ``/openapi.json``, their scripts from the
    installed fastapi-offline package (never a CDN); without it none of the three exists.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    from .pool import PromptPool

    if max_texts < 1:
        raise ContinualError(f"max_texts must be at least 1, got {max_texts}")
    if poll_interval <= 0:
        raise ContinualError(f"poll_interval must be positive, got {poll_interval}")
    holder = PoolHolder(
        pool_path, lambda: PromptPool.load(pool_path, backbone, device=device, dtype=dtype)
    )
    batcher = MicroBatcher(
        max_batch=max_batch, max_wait=max_wait, max_batch_tokens=max_batch_tokens
    )
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

    if docs:
        from fastapi_offline import FastAPIOffline

        app = FastAPIOffline(title="continual", lifespan=lifespan)
    else:
        app = FastAPI(
            title="continual", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
        )
    app.state.holder = holder
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(message.split())}, status_code=status)

    @app.post("/predict")
    async def predict(request: Request):
        pool = holder.pool  # this request's snapshot, whatever reloads happen meanwhile
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:
                    return error(413, f"request body over {max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # gone, or cut off by the body timeout: no one to answer
            return error(408, "the request body did not arrive")
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
        except Exception as failure:  # this request's own rows failed, even alone
            log.exception("prediction failed")
            detail = " ".join(str(failure).split())[:200]
            return error(500, f"prediction failed: {type(failure).__name__}: {detail}")
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
            "retried_batches": batcher.retries,
        }

    for path, endpoint in (("/tasks", tasks), ("/health", health)):  # HEAD: GET's headers
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
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


def build_server(
    app,
    sock: socket.socket,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
):
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[sock])``.

    Its connections answer 431 to headers over ``max_header_bytes``, and 408 (then close)
    where the headers take over ``header_timeout`` seconds or the body over ``body_timeout``.
    """
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=_bounded_protocol(header_timeout, body_timeout, max_header_bytes),
        h11_max_incomplete_event_size=max_header_bytes,
    )
    return uvicorn.Server(config)


def _bounded_protocol(header_timeout: float, body_timeout: float, max_header_bytes: int):
    """uvicorn's HTTP/1.1 protocol with the limits it lacks: read timeouts, 431 for headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        # A timer runs while a request's headers, then its body, are being read: from the
        # connection's start (an idle socket) or a new request's first byte, until h11 has the
        # whole request. Bytes trickling in do not reset it.
        _timer: asyncio.TimerHandle | None = None
        _phase = ""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm("headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:  # reading a request's headers
                if self._timer is None:
                    self._arm("headers")
                # h11 bounds only headers still incomplete; these may all come in one read.
                buffered = self.conn.trailing_data[0] + data
                end = buffered.find(b"\r\n\r\n")
                if (end if end >= 0 else len(buffered)) > max_header_bytes:
                    self._refuse(431, f"request headers over {max_header_bytes} bytes")
                    return
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                if self._phase != "body":
                    self._arm("body")
            elif state is not h11.IDLE:  # the request is read (or the connection failed)
                self._disarm()

        def _arm(self, phase: str) -> None:
            self._disarm()
            timeout = header_timeout if phase == "headers" else body_timeout
            self._phase = phase
            self._timer = self.loop.call_later(timeout, self._expired, phase, timeout)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._phase = None, ""

        def _expired(self, phase: str, timeout: float) -> None:
            self._timer, self._phase = None, ""
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:
                    self.transport.close()
                    return
                cycle.disconnected = True  # the app's request.stream() ends; its answer is dropped
                cycle.message_event.set()
            self._refuse(408, f"the request {phase} did not arrive within {timeout:g} s")

        def _refuse(self, status: int, message: str) -> None:
            # Written raw: h11 may not send a response before it has read a request.
            body = json.dumps({"error": message}).encode()
            reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            self.transport.close()

    return BoundedH11Protocol


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
