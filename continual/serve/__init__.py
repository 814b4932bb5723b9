"""Serve a pool over HTTP: one loaded backbone, every task, micro-batched forward passes.

    continual serve POOL [--host 127.0.0.1] [--port 8000] [--max-batch 64]
        [--max-batch-tokens 256] [--max-wait-ms 5] [--docs]

One module a job:

- `continual.serve.app`: the FastAPI app and its endpoints (`create_app`); `run_server`.
- `continual.serve.request`: a ``POST /predict`` body checked whole before it is queued, so a
  bad request gets a one-line 4xx and never reaches a batch.
- `continual.serve.batching`: `MicroBatcher`, concurrent requests sharing forward passes fairly
  in batches bounded in texts and tokens; a failed batch retried one request at a time.
- `continual.serve.reloading`: `PoolHolder`, the served pool swapped as one reference when
  another process adds or removes a task.
- `continual.serve.connection`: the listening socket and a uvicorn server whose connections
  bound header size and read times.

FastAPI and uvicorn are imported only when an app or a server is built, so importing this
package (and ``import continual``) stays light.
"""

from .app import create_app, run_server
from .batching import MicroBatcher, token_counts
from .connection import bind, build_server
from .reloading import PoolHolder
from .request import RequestError, parse_predict_request

__all__ = [
    "MicroBatcher",
    "PoolHolder",
    "RequestError",
    "bind",
    "build_server",
    "create_app",
    "parse_predict_request",
    "run_server",
    "token_counts",
]
