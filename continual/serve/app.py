"""The FastAPI app over a served pool, its endpoints, and `run_server` to serve it.

- ``POST /predict`` ``{"texts": [...], "task": null | "name", "min_score": null | x,
  "refuse": null | share}`` → ``{"predictions": [{"text", "task", "label", "output",
  "score"}, ...]}`` in input order (``output``: a text-to-text task's generated answer).
  ``task`` skips routing; ``min_score`` refuses routed texts whose routing score is below it,
  ``refuse`` those that match their task worse than that share (0.01 to 0.2) of its held-out
  inputs (task and label null; see `PromptPool.predict`).
- ``GET /tasks`` → ``{"tasks": [{"name", "labels"}, ...]}``; ``GET /health`` → 200. Both answer
  ``HEAD`` too. ``/docs`` and ``/redoc`` only with ``--docs`` (served from the installed
  fastapi-offline package: no script from a CDN).

FastAPI is imported only when an app is built, so ``import continual`` stays light.
"""

import logging
import os
import threading

from ..errors import ContinualError
from .batching import MicroBatcher
from .connection import bind, build_server
from .reloading import PoolHolder
from .request import RequestError, parse_predict_request

log = logging.getLogger("continual.serve")


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

    from ..pool import PromptPool

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
