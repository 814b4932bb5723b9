"""Reliability of `continual serve`: one bad request fails alone, a large one cannot hold a small
one back, and the connection has limits.

Found by probing the server as an attacker and as a careless client would: lone surrogates,
numbers too large for a float, task names of control characters or 100,000 characters, a
256-text request beside one-text ones, headers sent byte by byte, a 100 KB header, an idle
socket, HEAD requests, the interactive docs, and a manifest damaged then restored. A real
uvicorn server runs in a thread on a tiny random BERT, called over real HTTP and raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from test_serve import (  # noqa: F401 (setup: a fixture)
    TEXTS,
    assert_one_line_error,
    expected,
    setup,
    start_server,
)

from continual import PromptPool
from continual.errors import TaskDataError
from continual.format import MAX_TASK_NAME, pool_has
from continual.serve import MicroBatcher, PoolHolder, create_app
from continual.serve.batching import _Job
from continual.storage import MANIFEST

TIMEOUT = 1.0  # the test server's header and body read timeouts, seconds


@pytest.fixture(scope="module")
def served(setup, tiny_model_dir):  # noqa: F811
    """(client, port) of a server with small batches and one-second read timeouts."""
    pool_dir, _, _ = setup
    app = create_app(
        pool_dir,
        backbone=str(tiny_model_dir),
        max_batch=16,
        max_batch_tokens=40,  # two or three of the test texts a batch
        max_wait=0.05,
        max_texts=256,
        poll_interval=0.2,
    )
    server, thread, port = start_server(app, header_timeout=TIMEOUT, body_timeout=TIMEOUT)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client, port
    server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()


def post(client, content: bytes) -> httpx.Response:
    return client.post("/predict", content=content, headers={"content-type": "application/json"})


# -- every request is checked before it is batched ---------------------------------------------
def test_a_lone_surrogate_is_422_alone_and_its_batch_mates_are_answered(served, setup):  # noqa: F811
    client, _ = served
    bad = b'{"texts": ["rain \\ud800"]}'
    assert_one_line_error(post(client, bad), 422, "lone surrogate (U+D800) at character 5")
    # 48 requests at once, 6 of them bad: every good one answered as alone, every bad one 422.
    bodies = [
        bad if number % 8 == 3 else json.dumps({"texts": [TEXTS[number % 6]]}).encode()
        for number in range(48)
    ]
    with ThreadPoolExecutor(16) as workers:
        responses = list(workers.map(lambda body: post(client, body), bodies))
    for number, (body, response) in enumerate(zip(bodies, responses)):
        if body == bad:
            assert response.status_code == 422, response.text
        else:
            assert response.status_code == 200, response.text
            assert response.json()["predictions"] == expected(setup, [TEXTS[number % 6]])


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"min_score": int("9" * 400)}, "'min_score' must be a finite number or null (too large)"),
        ({"min_score": float("inf")}, "'min_score'"),
        ({"min_score": float("nan")}, "'min_score'"),
        ({"refuse": float("nan")}, "'refuse'"),
        ({"refuse": -1}, "'refuse' must be a share from 0.01 to 0.2"),
        ({"refuse": 1e308}, "'refuse' must be a share from 0.01 to 0.2"),
        ({"refuse": int("9" * 400)}, "'refuse'"),
        # A named task is never refused, but its share is checked all the same.
        ({"task": "colours", "refuse": float("nan")}, "'refuse'"),
        ({"task": "colours", "refuse": -1}, "'refuse' must be a share"),
        ({"task": "colours", "refuse": 1e308}, "'refuse' must be a share"),
        ({"task": "colours", "refuse": True}, "'refuse'"),
    ],
)
def test_numbers_out_of_range_are_422(served, fields, fragment):
    client, _ = served
    body = json.dumps({"texts": ["the red and the blue"], **fields}).encode()  # NaN as JSON allows
    assert_one_line_error(post(client, body), 422, fragment)


@pytest.mark.parametrize(
    "task, status, fragment",
    [
        ("col\x07ours", 422, "control character"),
        ("c" * (MAX_TASK_NAME + 1), 422, f"at most {MAX_TASK_NAME}"),
        ("x" * 100_000, 422, "(100000 characters)"),
        ("bad\udcff", 422, "not valid UTF-8"),
        ("nope " * 30 + "!", 404, "the pool has 2 task(s): 'colours', 'animals'"),
    ],
)
def test_task_names_are_checked_and_error_lines_cut_them(served, task, status, fragment):
    client, _ = served
    body = json.dumps({"texts": ["the red and the blue"], "task": task}).encode()
    response = post(client, body)
    assert_one_line_error(response, status, fragment)
    assert len(response.json()["error"]) < 400  # the name is cut to 80 characters


def test_error_lines_never_list_every_task():
    names = [f"task-{number}-" + "n" * 150 for number in range(40)]
    line = pool_has(names)
    assert line.startswith("the pool has 40 task(s): 'task-0-") and "(35 more)" in line
    assert names[5][:80] not in line and len(line) < 600


# -- fair batches; a failed batch retried one request at a time --------------------------------
class _Pool:
    """A pool on the real tiny backbone whose prediction fails for any batch holding a 'poison'
    text (as a tokenizer or model error would), so the retry path can be driven."""

    def __init__(self, pool: PromptPool) -> None:
        self.pool, self.backbone, self.tasks = pool, pool.backbone, pool.tasks
        self.calls: list[list[str]] = []

    def predict(self, texts, **options):
        self.calls.append(list(texts))
        if any("poison" in text for text in texts):
            raise RuntimeError("the model failed on this batch")
        return self.pool.predict(texts, **options)


def run_batcher(pool, requests: list[list[str]], **settings) -> list:
    """Each request submitted at once to a fresh batcher; each one's answers or error."""

    async def main():
        batcher = MicroBatcher(**settings)
        batcher.start()
        try:
            jobs = [batcher.submit(pool, texts, None, None) for texts in requests]
            return await asyncio.gather(*jobs, return_exceptions=True), batcher
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_a_failed_batch_is_retried_one_request_at_a_time(setup):  # noqa: F811
    pool_dir, _, reference = setup
    pool = _Pool(PromptPool.load(pool_dir, reference))
    requests = [[TEXTS[0]], ["the poison and the dog"], [TEXTS[1], TEXTS[2]], [TEXTS[3]]]
    outcomes, batcher = run_batcher(pool, requests, max_batch=64, max_wait=0.5)
    assert isinstance(outcomes[1], RuntimeError)
    for number in (0, 2, 3):
        answers = [prediction.to_dict() for prediction in outcomes[number]]
        assert answers == expected(setup, requests[number])
    assert batcher.retries == 1
    assert len(pool.calls[0]) == 5  # all four shared one batch first


def test_a_large_request_is_cut_into_bounded_batches_taken_in_turn(setup):  # noqa: F811
    """Unit test of the queue: a 12-text request, then a one-text request, budget 3 texts."""
    pool_dir, _, reference = setup
    pool = PromptPool.load(pool_dir, reference)
    batcher = MicroBatcher(max_batch=64, max_batch_tokens=30)
    big = _Job(pool, [f"long {n}" for n in range(12)], None, None, None, _Future(), [10] * 12)
    small = _Job(pool, ["short"], None, None, None, _Future(), [3])
    batcher._pending.extend([big, small])
    batches = []
    while batcher._pending:
        batches.append([(job is small, number) for job, number in batcher._next_batch()])
    assert batches[0] == [(False, 0), (True, 0), (False, 1)]  # the small one in the first batch
    assert [len(batch) for batch in batches] == [3, 3, 3, 3, 1]  # 30 tokens at most each
    assert [number for batch in batches for small_, number in batch if not small_] == list(
        range(12)
    )
    batcher._executor.shutdown()
    batcher._counter.shutdown()


class _Future:
    def done(self) -> bool:
        return False


def test_a_one_text_request_is_answered_while_a_256_text_one_runs(served, setup):  # noqa: F811
    client, _ = served
    big = [f"{TEXTS[n % 6]} number {n}" for n in range(256)]
    before = client.get("/health").json()
    with ThreadPoolExecutor(2) as workers:
        large = workers.submit(client.post, "/predict", json={"texts": big})
        time.sleep(0.2)
        small = client.post("/predict", json={"texts": [TEXTS[4]]})
        assert not large.done() or large.result().status_code == 200
        assert small.json()["predictions"] == expected(setup, [TEXTS[4]])
        assert large.result().json()["predictions"] == expected(setup, big)
    after = client.get("/health").json()
    assert after["batches"] - before["batches"] >= 256 // 4  # bounded: a few texts a batch


# -- the connection's limits ---------------------------------------------------------------------
def raw(port: int, *chunks: bytes, pause: float = 0.0) -> bytes:
    """Send ``chunks`` (``pause`` seconds apart, while the server keeps the socket open) and
    read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause)
        except OSError:  # closed by the server while still sending
            pass
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    return received


def test_a_header_over_16_kib_is_431(served):
    _, port = served
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw(port, request).startswith(b"HTTP/1.1 431 ")


def test_an_idle_socket_is_closed_with_408(served):
    _, port = served
    assert raw(port).startswith(b"HTTP/1.1 408 ")


def test_headers_sent_byte_by_byte_time_out_though_bytes_keep_coming(served):
    _, port = served
    request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"s" * 40
    # One byte every 0.05 s would take 4 s in all; the header timeout is 1 s from the first.
    answer = raw(port, *[bytes([b]) for b in request], pause=0.05)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b"headers did not arrive" in answer


def test_a_body_that_does_not_arrive_is_408(served):
    _, port = served
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = raw(port, head + b"Content-Length: 200\r\n\r\n" + b'{"texts": [')
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body did not arrive" in answer


def test_a_kept_alive_connection_serves_a_second_request(served):
    _, port = served
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = raw(port, request, request, pause=0.3)  # then idle: closed by keep-alive
    assert answer.count(b"HTTP/1.1 200 ") == 2


@pytest.mark.parametrize("path", ["/health", "/tasks"])
def test_head_answers_on_get_routes(served, path):
    client, _ = served
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""
    assert client.get(path).status_code == 200


def test_docs_are_off_by_default(served):
    client, _ = served
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404


def test_docs_flag_serves_them_from_the_installed_package(setup, tiny_model_dir):  # noqa: F811
    pool_dir, _, _ = setup
    app = create_app(pool_dir, backbone=str(tiny_model_dir), docs=True)
    server, thread, port = start_server(app)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for page in ("/docs", "/redoc"):
                html = client.get(page)
                assert html.status_code == 200 and "<script" in html.text
                sources = [part.split('"')[1] for part in html.text.split("src=")[1:]]
                assert sources and all(source.startswith("/") for source in sources), sources
                assert "cdn" not in html.text.lower() and "googleapis" not in html.text
                for source in sources:  # the scripts themselves come from this server
                    assert client.get(source).status_code == 200
            assert "/predict" in client.get("/openapi.json").json()["paths"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- the served pool's state ---------------------------------------------------------------------
def test_health_recovers_when_a_bad_manifest_is_restored(setup, tmp_path):  # noqa: F811
    pool_dir, _, reference = setup
    copy = tmp_path / "pool"
    PromptPool.load(pool_dir, reference).save(copy)
    holder = PoolHolder(copy, lambda: PromptPool.load(copy, reference))
    good = (copy / MANIFEST).read_bytes()
    (copy / MANIFEST).write_text("{ not json")
    assert holder.check() is False and "manifest is corrupt" in holder.reload_error
    replacement = copy / "restored.json"
    replacement.write_bytes(good)
    replacement.replace(copy / MANIFEST)  # identical bytes, another file
    assert holder.check() is False
    assert holder.reload_error is None
    assert holder.pool.tasks == ["colours", "animals"]


def test_gathered_prompts_follow_the_backbone_to_another_device(setup, tiny_model_dir):  # noqa: F811
    from continual import Backbone

    pool = PromptPool.load(setup[0], Backbone.load(tiny_model_dir, max_length=32))
    pool.predict(TEXTS[:2], tasks="colours")
    rows = torch.tensor([1, 0, 1])
    assert pool._stack().prompts(rows).device.type == "cpu"
    pool.backbone.model.to("meta")  # another device, as .to("cuda") would be
    weights, biases = pool._stack().heads(rows)
    prompts = pool._stack().prompts(rows)
    assert {prompts.device.type, weights.device.type, biases.device.type} == {"meta"}
    assert prompts.shape[0] == weights.shape[0] == biases.shape[0] == 3


def test_task_names_are_checked_by_the_api(setup):  # noqa: F811
    import dataclasses

    from continual import Task

    pool_dir, exported, reference = setup
    pool = PromptPool.load(pool_dir, reference)
    entry = pool.entries[0]
    for name in ("bad\nname", "n" * (MAX_TASK_NAME + 1), "bad\udcff", " padded"):
        with pytest.raises(TaskDataError, match="task name"):
            pool.add(dataclasses.replace(entry, name=name))
        with pytest.raises(TaskDataError, match="task name"):
            pool.import_task(exported, name=name)
        with pytest.raises(TaskDataError, match="task name"):  # before any training
            pool.learn(Task(name, train=[("a b", "x"), ("c d", "y")]), progress=False)
    assert pool.tasks == ["colours", "animals"]
    assert torch.equal(pool.entries[0].prompt, entry.prompt)
