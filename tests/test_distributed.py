"""Data-parallel training: `continual learn` under torchrun, and the Python API in 2 processes.

Both run 2 CPU processes (gloo) on a tiny random BERT saved to a folder and compare with one
process trained with the same seed and data. The prompts cannot be bit-identical: each rank
tokenizes its half of a batch, padded to its own longest text, so the attention sums and the
loss run in other orders and float32 rounding differs (about 1e-7 on values of about 0.1,
measured). A tolerance of 1e-5 is far above that and far below one Adam step (a learning rate
of 0.03 moves a prompt entry by up to 0.03 per step), so a rank that trained on the wrong rows
would fail it. The ranks among themselves must agree bit for bit: they apply the same averaged
gradients to the same start.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import COLOURS, synthetic_pairs

from continual import Backbone, PromptPool, Task, TrainingConfig, distributed
from continual.cli import main
from continual.errors import ContinualError
from continual.storage import read_entries
from continual.trainer import shard as _shard

TOLERANCE = 1e-5
# The installed `continual` command, as in `torchrun --nproc-per-node N $(which continual) learn`.
CONTINUAL_SCRIPT = Path(sys.executable).with_name("continual")
LEARN_ARGS = [
    "--task",
    "colours",
    "--epochs",
    "2",
    "--prompt-length",
    "4",
    "--max-length",
    "32",
    "--selector",
    "prototypes",
    "--no-progress",
]


def tensors(entry) -> tuple[torch.Tensor, ...]:
    return entry.prompt, entry.head_weight, entry.head_bias


def assert_close(left, right, tolerance: float) -> None:
    for a, b in zip(tensors(left), tensors(right)):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= tolerance


# -- one process: nothing happens ------------------------------------------------------------


def test_a_plain_process_makes_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched()
    assert distributed.init("cpu") is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()  # no group: returns at once
    assert distributed.all_sum([3, 4.5], torch.device("cpu")) == [3.0, 4.5]
    distributed.check_same([torch.ones(2)], "prompts")  # nothing to compare with
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    with distributed.process_group("cpu") as device:  # joins nothing, keeps the device
        assert device == "cpu" and not distributed.active()


def test_a_launch_without_a_rendezvous_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ContinualError, match="MASTER_ADDR"):
        distributed.init("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ContinualError, match="WORLD_SIZE"):
        distributed.launched()


def test_shards_cover_the_global_batch_and_weigh_to_its_mean():
    rows = torch.arange(5)
    shares = [_shard(rows, 2, rank, torch.device("cpu")) for rank in range(2)]
    assert sorted(torch.cat([share for share, _ in shares]).tolist()) == list(range(5))
    assert sum(float(weights.sum()) for _, weights in shares) == pytest.approx(1.0)
    # A last batch with fewer rows than ranks: the empty share runs one row at weight 0.
    share, weights = _shard(torch.tensor([7]), 2, 1, torch.device("cpu"))
    assert share.tolist() == [7] and weights.tolist() == [0.0]


# -- the command line under torchrun -------------------------------------------------------


@pytest.mark.slow
def test_continual_learn_under_torchrun_matches_one_process(tiny_model_dir, tmp_path):
    train = tmp_path / "train.csv"
    rows = synthetic_pairs(COLOURS, 40, seed=1)
    train.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    args = ["--train", str(train), "--backbone", str(tiny_model_dir), *LEARN_ARGS]
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    assert main(["learn", str(single), *args]) == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    command = [*launch, "2", str(CONTINUAL_SCRIPT), "learn", str(parallel)]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    # Rank 0 alone prints the result; rank 1 one line with a digest of what it learned.
    result = json.loads(done.stdout.strip())
    assert result["task"] == "colours" and result["pool"] == str(parallel)
    found = re.findall(r"rank 1 of 2: .*sha256 ([0-9a-f]{16})\)", done.stderr)
    assert len(found) == 1, done.stderr[-3000:]
    # The pool was written once (the same files as one process writes), and loads.
    listing = [
        sorted(re.sub("[0-9a-f]{32}", "HASH", p.name) for p in pool.rglob("*"))
        for pool in (single, parallel)
    ]
    assert listing[0] == listing[1]
    assert len(list((parallel / "tasks").iterdir())) == 1
    loaded = PromptPool.load(parallel, backbone=str(tiny_model_dir))
    assert loaded.tasks == ["colours"]
    learned = loaded.entries[0]
    assert learned.stats["processes"] == 2
    assert found[0] == distributed.digest(tensors(learned))  # rank 1 holds what rank 0 wrote
    assert_close(learned, read_entries(single)[0], TOLERANCE)
    assert seconds < 120


# -- the Python API in 2 processes ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def api_task() -> Task:
    """33 training rows in batches of 16: the last global batch has 1 row, so rank 1's share
    of it is empty; a validation split so that early stopping decides on summed counts."""
    pairs = synthetic_pairs(COLOURS, 20, seed=3)
    return Task("colours", train=pairs[:33], validation=pairs[33:], test=pairs[33:])


def api_pool(tiny_model_dir: Path) -> PromptPool:
    backbone = Backbone.load(tiny_model_dir, max_length=32)
    training = TrainingConfig(epochs=3, batch_size=16, patience=1)
    return PromptPool(backbone, prompt_length=4, selector="prototypes", training=training)


def _api_worker(rank: int, port: int, tiny_model_dir: Path, out: Path) -> None:
    os.environ.update(
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    pool = api_pool(tiny_model_dir)
    entry = pool.learn(api_task(), seed=5, progress=False)  # joins the group by itself
    torch.save({"tensors": tensors(entry), "stats": entry.stats}, out / f"rank{rank}.pt")
    if distributed.is_main():
        pool.save(out / "pool")
    try:  # replicas that differ are refused on every rank
        distributed.check_same([torch.tensor([float(rank)])], "test values")
    except ContinualError as error:
        (out / f"refused{rank}.txt").write_text(str(error))
    distributed.teardown()


@pytest.mark.slow
def test_prompt_pool_learn_in_two_processes_matches_one(tiny_model_dir, tmp_path):
    context = torch.multiprocessing.spawn(
        _api_worker, args=(_free_port(), tiny_model_dir, tmp_path), nprocs=2, join=False
    )
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 training processes did not finish in 180 s")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for first, second in zip(ranks[0]["tensors"], ranks[1]["tensors"]):
        assert torch.equal(first, second)  # bit for bit
    for stats in (ranks[0]["stats"], ranks[1]["stats"]):
        stats.pop("train_seconds")  # each rank's own clock
    assert ranks[0]["stats"] == ranks[1]["stats"]
    for rank in range(2):
        assert "different test values" in (tmp_path / f"refused{rank}.txt").read_text()
    saved = read_entries(tmp_path / "pool")[0]
    assert all(torch.equal(a, b) for a, b in zip(tensors(saved), ranks[0]["tensors"]))
    reference = api_pool(tiny_model_dir).learn(api_task(), seed=5, progress=False)
    assert_close(saved, reference, TOLERANCE)
    assert saved.stats["epochs_run"] == reference.stats["epochs_run"]
    assert saved.stats["best_epoch"] == reference.stats["best_epoch"]
