"""`continual serve`: a real uvicorn server on 127.0.0.1 (in a thread), called over real HTTP.

The pool sits on a tiny random BERT saved to a folder. A task is imported into (and removed
from) the pool on disk by another process while the server runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import ANIMALS, COLOURS, synthetic_pairs

from continual import Backbone, PromptPool, Task, TrainingConfig
from continual.manage import import_task
from continual.serve import PoolHolder, bind, build_server, create_app

SIZES = {
    "small": ["ant", "mouse", "pea", "seed", "bean", "pin", "crumb"],
    "big": ["whale", "mountain", "tower", "ship", "elephant", "planet", "bus"],
}
TEXTS = [
    "the red and the blue here",
    "the dog and the lion now",
    "the cat and the wolf",
    "the teal and the gold today",
    "the eagle and the puppy outside",
    "the whale and the ant again",
]
REPO = Path(__file__).resolve().parents[1]


def new_pool(backbone) -> PromptPool:
    return PromptPool(
        backbone,
        prompt_length=4,
        selector="prototypes",
        training=TrainingConfig(epochs=1, batch_size=32),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """A two-task pool on disk, a third task exported to a file, and a reference backbone."""
    root = tmp_path_factory.mktemp("serve")
    backbone = Backbone.load(tiny_model_dir, max_length=32)
    pool = new_pool(backbone)
    pool.learn(Task.from_pairs("colours", synthetic_pairs(COLOURS, 20, seed=1)), progress=False)
    pool.learn(Task.from_pairs("animals", synthetic_pairs(ANIMALS, 20, seed=2)), progress=False)
    pool_dir = pool.save(root / "pool")
    other = new_pool(backbone)
    other.learn(Task.from_pairs("sizes", synthetic_pairs(SIZES, 20, seed=3)), progress=False)
    exported = other.export_task("sizes", root / "sizes.safetensors")
    # Expected answers come from a backbone of their own: the server's is busy in its thread.
    reference = Backbone.load(tiny_model_dir, max_length=32)
    return pool_dir, exported, reference


@pytest.fixture(scope="module")
def server(setup, tiny_model_dir):
    pool_dir, _, _ = setup
    app = create_app(
        pool_dir,
        backbone=str(tiny_model_dir),
        max_batch=16,
        max_wait=0.05,
        max_texts=8,
        max_body_bytes=4096,
        poll_interval=0.2,
    )
    uvicorn_server, thread, port = start_server(app)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
        yield client
    uvicorn_server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()


def start_server(app, **limits):
    """A real uvicorn server for ``app`` on a free port, in a thread: (server, thread, port)."""
    sock = bind("127.0.0.1", 0)
    uvicorn_server = build_server(app, sock, **limits)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return uvicorn_server, thread, sock.getsockname()[1]


def expected(setup, texts, tasks=None, min_score=None, refuse=None) -> list[dict]:
    pool_dir, _, reference = setup
    pool = PromptPool.load(pool_dir, reference)
    answers = pool.predict(texts, tasks=tasks, min_score=min_score, refuse=refuse)
    return [p.to_dict() for p in answers]


def assert_one_line_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and fragment in message, message


def test_health_and_tasks(server):
    health = server.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert server.get("/tasks").json() == {
        "tasks": [
            {"name": "colours", "labels": ["cool", "warm"]},
            {"name": "animals", "labels": ["pet", "wild"]},
        ]
    }


def test_predict_routed_forced_and_refused(server, setup):
    routed = server.post("/predict", json={"texts": TEXTS})
    assert routed.status_code == 200
    assert routed.json() == {"predictions": expected(setup, TEXTS)}
    assert [row["text"] for row in routed.json()["predictions"]] == TEXTS  # input order

    forced = server.post("/predict", json={"texts": TEXTS, "task": "animals", "min_score": None})
    assert forced.json() == {"predictions": expected(setup, TEXTS, tasks="animals")}
    assert {row["task"] for row in forced.json()["predictions"]} == {"animals"}

    refused = server.post("/predict", json={"texts": TEXTS, "min_score": 1e9})
    assert [(r["task"], r["label"]) for r in refused.json()["predictions"]] == [(None, None)] * len(
        TEXTS
    )
    # min_score never refuses texts whose task was given.
    kept = server.post("/predict", json={"texts": TEXTS[:2], "task": "colours", "min_score": 1e9})
    assert [r["task"] for r in kept.json()["predictions"]] == ["colours", "colours"]
    # Calibrated refusal answers as the pool does.
    calibrated = server.post("/predict", json={"texts": TEXTS, "refuse": 0.2})
    assert calibrated.json() == {"predictions": expected(setup, TEXTS, refuse=0.2)}


def test_concurrent_mixed_requests_share_forward_passes(server, setup):
    requests = [
        (
            {"texts": [TEXTS[i % len(TEXTS)], TEXTS[(i + 1) % len(TEXTS)]]}
            | ({"task": ["colours", "animals"][i % 2]} if i % 3 else {})
        )
        for i in range(24)
    ]
    before = server.get("/health").json()
    with ThreadPoolExecutor(12) as workers:
        responses = list(workers.map(lambda body: server.post("/predict", json=body), requests))
    after = server.get("/health").json()
    for body, response in zip(requests, responses):
        assert response.status_code == 200
        assert response.json()["predictions"] == expected(setup, body["texts"], body.get("task"))
    batches = after["batches"] - before["batches"]
    rows = after["rows"] - before["rows"]
    assert rows == 48
    assert batches < len(requests)  # several requests, of mixed tasks, shared a forward pass


@pytest.mark.parametrize(
    "content, status, fragment",
    [
        (b'{"texts": ["a", ', 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'["a list"]', 422, "JSON object"),
        (b'{"text": ["typo"]}', 422, "unknown field"),
        (b'{"task": "colours"}', 422, "missing field 'texts'"),
        (b'{"texts": "one string"}', 422, "must be a list"),
        (b'{"texts": []}', 422, "is empty"),
        (b'{"texts": ["fine", 3]}', 422, "texts[1] is a int"),
        (b'{"texts": ["fine", "   "]}', 422, "texts[1] is empty"),
        (b'{"texts": ["fine"], "task": "nope"}', 404, "unknown task 'nope'"),
        (b'{"texts": ["fine"], "task": 7}', 422, "'task' must be"),
        (b'{"texts": ["fine"], "min_score": "high"}', 422, "'min_score'"),
        (b'{"texts": ["fine"], "min_score": true}', 422, "'min_score'"),
        (b'{"texts": ["fine"], "refuse": 0.5}', 422, "'refuse'"),
        (b'{"texts": ["fine"], "refuse": "5%"}', 422, "'refuse'"),
        (b'{"texts": ["a","b","c","d","e","f","g","h","i"]}', 413, "at most 8"),
        (b'{"texts": ["' + b"long " * 1000 + b'"]}', 413, "request body over 4096 bytes"),
    ],
)
def test_bad_requests_get_a_one_line_4xx_and_the_server_keeps_serving(
    server, content, status, fragment
):
    response = server.post(
        "/predict", content=content, headers={"content-type": "application/json"}
    )
    assert_one_line_error(response, status, fragment)
    assert server.post("/predict", json={"texts": ["still here"]}).status_code == 200


def test_holder_swaps_one_reference_and_keeps_the_old_pool_usable(setup, tmp_path, caplog):
    pool_dir, exported, reference = setup
    copy = tmp_path / "pool"
    PromptPool.load(pool_dir, reference).save(copy)
    holder = PoolHolder(copy, lambda: PromptPool.load(copy, reference))
    old = holder.pool
    assert holder.check() is False  # nothing changed on disk
    import_task(copy, exported)
    with caplog.at_level("WARNING", logger="continual.serve"):
        assert holder.check() is True
    # One short line, however many tasks the pool holds: the count and what changed.
    assert f"reloaded {copy}: 3 task(s); added 'sizes'; removed none" in caplog.text
    assert holder.pool is not old and holder.pool.backbone is old.backbone
    assert holder.pool.tasks == ["colours", "animals", "sizes"]
    assert old.tasks == ["colours", "animals"]  # a request holding it finishes on it
    assert len(old.predict(TEXTS)) == len(TEXTS)


def test_a_save_landing_while_the_pool_loads_is_picked_up_at_the_first_poll(setup, tmp_path):
    pool_dir, exported, reference = setup
    copy = tmp_path / "pool"
    PromptPool.load(pool_dir, reference).save(copy)

    def load_then_change():
        pool = PromptPool.load(copy, reference)
        import_task(copy, exported)  # another process saves after the read, before serving
        return pool

    holder = PoolHolder(copy, load_then_change)
    assert holder.pool.tasks == ["colours", "animals"]
    assert holder.check() is True
    assert holder.pool.tasks == ["colours", "animals", "sizes"]


def cli(argv) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    )
    done = subprocess.run(
        [sys.executable, "-m", "continual.cli", *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def wait_for(condition, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not seen within the deadline"
        time.sleep(0.1)


def task_names(server) -> list[str]:
    return [task["name"] for task in server.get("/tasks").json()["tasks"]]


def test_a_task_imported_on_disk_is_served_without_restart(server, setup):
    """Last in the module: it changes the served pool (and puts it back)."""
    pool_dir, exported, _ = setup
    assert server.post("/predict", json={"texts": TEXTS, "task": "sizes"}).status_code == 404
    cli(["import", pool_dir, exported])  # another process changes the pool on disk
    seen = time.monotonic()
    wait_for(lambda: "sizes" in task_names(server))
    assert time.monotonic() - seen < 5
    assert server.get("/tasks").json()["tasks"][2] == {"name": "sizes", "labels": ["big", "small"]}
    forced = server.post("/predict", json={"texts": TEXTS, "task": "sizes"})
    assert forced.status_code == 200
    assert forced.json()["predictions"] == expected(setup, TEXTS, tasks="sizes")
    routed = server.post("/predict", json={"texts": TEXTS})
    assert routed.json()["predictions"] == expected(setup, TEXTS)  # routes among three tasks
    assert server.get("/health").json()["tasks"] == 3

    cli(["remove", pool_dir, "--task", "sizes"])
    wait_for(lambda: "sizes" not in task_names(server))
    assert_one_line_error(
        server.post("/predict", json={"texts": TEXTS, "task": "sizes"}), 404, "unknown task 'sizes'"
    )
    assert server.get("/health").json()["reload_error"] is None
