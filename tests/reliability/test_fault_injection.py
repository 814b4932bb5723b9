"""Fault injection: processes killed with SIGKILL at random times, including inside save(),
lose no saved task; two processes never change one pool at once; same seed, same bits.

The worker (tests/_fault_worker.py) learns six tiny tasks in sequence on the tiny random BERT
(seed 0), saving after each one (several times, to widen the window a kill can land in save) and
skipping tasks already on disk. It runs as a fork server: one process imports torch and
transformers once and forks a fresh child per run, so dozens of runs, each killed at a seeded
random moment, fit in a few seconds. After every kill the pool on disk must load and hold every
task whose "saved" line the killed child had printed, bit-identical to a run never killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import _fault_worker as worker
import pytest
import torch
from _counted import record_counts

from continual import PoolLockedError, PromptPool
from continual.pool_lock import PoolLock
from continual.storage import MANIFEST, read_manifest, read_task_file

pytestmark = pytest.mark.slow  # child processes and SIGKILLs: seconds per test

ROOT = Path(__file__).resolve().parents[2]  # the repository
WORKER = Path(__file__).with_name("_fault_worker.py")
TASKS = worker.TASK_NAMES  # six tasks
SAVES = 8  # saves per learned task, to widen the window a kill can land inside save()
MIN_KILLS, MAX_KILLS, KILL_SECONDS = 40, 100, 20.0
MIN_SAVE_KILLS = 10


def _env() -> dict:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    env.pop("PYTHONHASHSEED", None)
    return env


class ForkServer:
    """Drives ``_fault_worker.py serve``: spawn a child per run, SIGKILL it, collect its exit."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), "serve"],
            cwd=ROOT,
            env=_env(),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.unreaped: set[int] = set()
        assert self._answer(timeout=180) == "ready"

    def _answer(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"the worker server said nothing for {timeout} s"
        line = self.process.stdout.readline()
        assert line, f"the worker server exited with {self.process.wait()}"
        return line.strip()

    def _ask(self, timeout: float = 60.0, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self._answer(timeout))

    def spawn(self, log: Path, **command) -> int:
        pid = self._ask(op="spawn", log=str(log), **command)["pid"]
        self.unreaped.add(pid)
        return pid

    def kill(self, pid: int) -> None:
        # Safe: an unreaped child is alive or a zombie, so its pid cannot have been reused.
        assert pid in self.unreaped
        os.kill(pid, signal.SIGKILL)

    def wait(self, pid: int, timeout: float = 120.0) -> int:
        code = self._ask(timeout=timeout, op="wait", pid=pid)["code"]
        self.unreaped.discard(pid)
        return code

    def close(self) -> None:
        for pid in list(self.unreaped):
            try:
                self.kill(pid)
                self.wait(pid, timeout=10)
            except (OSError, AssertionError):
                pass
        try:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server():
    started = ForkServer()
    yield started
    started.close()


def lines_of(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_for(log: Path, word: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.split(" ")[0] == word for line in lines_of(log)):
            return
        time.sleep(0.005)
    raise AssertionError(f"no {word!r} in {log} after {timeout} s:\n{log.read_text()}")


def saved_tasks(lines: list[str]) -> set[str]:
    """Tasks whose save returned: durable from that moment."""
    return {line.split()[1] for line in lines if line.startswith("saved ")}


def phase_of(lines: list[str]) -> str:
    """Where a killed run was, from the last line it printed."""
    last = lines[-1].split()[0] if lines else ""
    return {
        "": "starting",
        "start": "loading",
        "loaded": "loading",
        "skip": "loading",
        "learning": "learning",
        "saving": "saving",
        "saved": "between saves",
    }.get(last, last)


@pytest.fixture(scope="module")
def reference(server, tiny_backbone, tmp_path_factory):
    """All six tasks learned and saved by one run that nobody killed."""
    root = tmp_path_factory.mktemp("reference")
    log = root / "run.log"
    began = time.monotonic()
    pid = server.spawn(log, kind="learn", pool=str(root / "pool"), tasks=len(TASKS), saves=SAVES)
    wait_for(log, "start")
    started = time.monotonic()
    assert server.wait(pid) == 0, log.read_text()
    finished = time.monotonic()
    assert lines_of(log)[-1] == "done"
    manifest = json.loads((root / "pool" / MANIFEST).read_text())
    pool = PromptPool.load(root / "pool", tiny_backbone)
    assert pool.tasks == TASKS
    return SimpleNamespace(
        dir=root / "pool",
        records={record["name"]: record for record in manifest["tasks"]},
        tensors={entry.name: entry.tensors() for entry in pool.entries},
        startup=started - began,
        per_task=(finished - started) / len(TASKS),
    )


def check_pool(directory: Path, durable: set[str], reference, backbone) -> list[str]:
    """The pool on disk loads, holds every durable task, and each entry is bit-identical to the
    reference. Returns the tasks on disk."""
    if not (directory / MANIFEST).exists():
        assert not durable, f"no manifest, yet {sorted(durable)} had been saved"
        return []
    pool = PromptPool.load(directory, backbone)  # checks every checksum and shape
    assert pool.tasks == TASKS[: len(pool.tasks)]
    assert durable <= set(pool.tasks), f"lost {sorted(durable - set(pool.tasks))}"
    manifest = json.loads((directory / MANIFEST).read_text())
    for record, entry in zip(manifest["tasks"], pool.entries):
        expected = reference.records[entry.name]
        assert (record["file"], record["sha256"]) == (expected["file"], expected["sha256"])
        tensors = entry.tensors()
        assert set(tensors) == set(reference.tensors[entry.name])
        for key, tensor in reference.tensors[entry.name].items():
            assert torch.equal(tensors[key], tensor), (entry.name, key)
    with PoolLock(directory, timeout=0):  # a killed holder leaves no stale lock
        pass
    return pool.tasks


def assert_no_leftovers(directory: Path, saved: bool = True) -> None:
    """After a completed save: only the manifest, the lock and the named task files.

    A killed save may leave a temporary file, or a task file the manifest does not name yet;
    loading ignores them and the next save removes them. Without a save since (``saved``
    false: a resumed run that found every task on disk), only such leftovers may remain.
    """
    manifest = json.loads((directory / MANIFEST).read_text())
    named = {record["file"].split("/")[-1] for record in manifest["tasks"]}
    top = {p.name for p in directory.iterdir()}
    tasks = {p.name for p in (directory / "tasks").iterdir()}
    if saved:
        assert top == {".lock", MANIFEST, "tasks"} and tasks == named, (top, tasks)
    else:
        assert {".lock", MANIFEST, "tasks"} <= top and named <= tasks
        assert all(
            re.fullmatch(r"\.manifest\.json\..+\.tmp", name)
            for name in top - {".lock", MANIFEST, "tasks"}
        ), top
        assert all(
            re.fullmatch(r"\.task-.+\.tmp|task-[0-9a-f]{32}\.safetensors", name)
            for name in tasks - named
        ), tasks


def _clean(directory: Path) -> bool:
    try:
        assert_no_leftovers(directory)
        return True
    except AssertionError:
        return False


def test_sigkill_at_random_times_loses_no_saved_task(server, reference, tiny_backbone, tmp_path):
    rng = random.Random(20240601)
    stats: Counter = Counter()
    round_dir = tmp_path / "round-0"
    durable: set[str] = set()
    on_disk: list[str] = []
    deadline = time.monotonic() + KILL_SECONDS

    def enough() -> bool:
        # Kills inside save() are the point; how many land there depends on the machine's
        # speed, so keep killing until there are enough of them rather than hoping.
        if stats["killed while saving"] < MIN_SAVE_KILLS:
            return False
        return stats["kills"] >= MAX_KILLS or (
            time.monotonic() >= deadline and stats["kills"] >= MIN_KILLS
        )

    while not enough():
        assert stats["runs"] < 10 * MAX_KILLS, f"too few kills landed (in save) {stats}"
        log = tmp_path / f"run-{stats['runs']}.log"
        pid = server.spawn(log, kind="learn", pool=str(round_dir), tasks=len(TASKS), saves=SAVES)
        stats["runs"] += 1
        if rng.random() < 0.15:  # somewhere in start-up: building the backbone, lock, load
            time.sleep(rng.uniform(0, reference.startup))
        else:  # somewhere in loading, and the learning and saving still to do
            wait_for(log, "start")
            remaining = len(TASKS) - len(on_disk) + 0.5
            time.sleep(rng.uniform(0, reference.per_task * remaining))
        server.kill(pid)
        code = server.wait(pid)
        lines = lines_of(log)
        if code == -signal.SIGKILL:
            stats["kills"] += 1
            stats[f"killed while {phase_of(lines)}"] += 1
        else:
            assert code == 0 and lines[-1] == "done", f"exit {code}:\n{log.read_text()}"
        durable |= saved_tasks(lines)
        stats["durable tasks checked"] += len(durable)
        on_disk = check_pool(round_dir, durable, reference, tiny_backbone)
        if "done" in lines:  # this round's pool is complete: start another from nothing
            assert on_disk == TASKS
            assert_no_leftovers(round_dir, saved=bool(saved_tasks(lines)))
            stats["leftovers until the next save"] += not _clean(round_dir)
            stats["rounds completed"] += 1
            round_dir = tmp_path / f"round-{stats['rounds completed']}"
            durable, on_disk = set(), []

    # A run nobody kills resumes the last, interrupted pool and completes it.
    log = tmp_path / "resume.log"
    pid = server.spawn(log, kind="learn", pool=str(round_dir), tasks=len(TASKS), saves=SAVES)
    assert server.wait(pid) == 0, log.read_text()
    skipped = [line.split()[1] for line in lines_of(log) if line.startswith("skip ")]
    assert skipped == on_disk  # resumed: tasks on disk were not learned again
    assert check_pool(round_dir, set(TASKS), reference, tiny_backbone) == TASKS
    assert_no_leftovers(round_dir, saved=bool(saved_tasks(lines_of(log))))

    stats["tasks lost"] = 0  # check_pool asserted it after every run
    record_counts("fault injection", dict(stats))


def test_kill_during_save_keeps_the_previous_pool_loadable(
    server, reference, tiny_backbone, tmp_path
):
    """Deterministic companion: kill right after a 'saving' line of the third task, many times
    over, and the pool always holds the first two tasks, or three."""
    for attempt in range(5):
        directory = tmp_path / f"pool-{attempt}"
        log = tmp_path / f"run-{attempt}.log"
        pid = server.spawn(log, kind="learn", pool=str(directory), tasks=3, saves=SAVES)
        deadline = time.monotonic() + 60
        while not any(line.startswith((f"saving {TASKS[2]}", "done")) for line in lines_of(log)):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.001)
        time.sleep(attempt * 0.002)
        server.kill(pid)
        server.wait(pid)
        lines = lines_of(log)
        on_disk = check_pool(directory, saved_tasks(lines), reference, tiny_backbone)
        assert on_disk in (TASKS[:2], TASKS[:3]), (on_disk, lines[-3:])


# -- locks --------------------------------------------------------------------------------------


def test_pool_lock_refuses_a_second_process_until_the_first_releases(server, tmp_path):
    directory = tmp_path / "pool"
    log = tmp_path / "holder.log"
    pid = server.spawn(log, kind="lock", pool=str(directory), hold=2.0)
    wait_for(log, "locked")
    began = time.monotonic()
    with pytest.raises(PoolLockedError) as error, PoolLock(directory, timeout=0):
        pass
    assert time.monotonic() - began < 1.0  # refused at once, not after waiting
    message = str(error.value)
    assert str(directory) in message and "another process is changing this pool" in message
    assert "--wait" in message  # says what to do
    with PoolLock(directory, timeout=60):
        waited = time.monotonic() - began
        assert "releasing" in lines_of(log)  # acquired only once the holder let go
    assert 0.5 < waited < 60
    assert server.wait(pid) == 0


def test_a_lock_holder_killed_with_sigkill_leaves_no_stale_lock(server, tmp_path):
    directory = tmp_path / "pool"
    log = tmp_path / "holder.log"
    pid = server.spawn(log, kind="lock", pool=str(directory), hold=600)
    wait_for(log, "locked")
    with pytest.raises(PoolLockedError), PoolLock(directory, timeout=0):
        pass
    server.kill(pid)
    assert server.wait(pid) == -signal.SIGKILL
    with PoolLock(directory, timeout=0):
        assert (directory / ".lock").read_text().strip() == str(os.getpid())


# -- the command line racing itself (real packaged MiniLM) ----------------------------------------

COLOURS = [
    "red roses,warm",
    "an orange sunset,warm",
    "yellow sunflowers,warm",
    "golden sand,warm",
    "pink blossom,warm",
    "a crimson scarf,warm",
    "blue water,cool",
    "a green meadow,cool",
    "purple grapes,cool",
    "teal paint,cool",
    "a navy coat,cool",
    "violet flowers,cool",
]
ANIMALS = [
    ("my dog sleeps", "pet"),
    ("the cat purrs", "pet"),
    ("a hamster in a cage", "pet"),
    ("the parrot talks", "pet"),
    ("a puppy plays", "pet"),
    ("the kitten naps", "pet"),
    ("a lion roars", "wild"),
    ("the tiger hunts", "wild"),
    ("wolves howl", "wild"),
    ("a bear catches salmon", "wild"),
    ("the eagle soars", "wild"),
    ("a shark circles", "wild"),
]


def _check_saved_pool(directory: Path) -> list[str]:
    """Manifest and every task file intact (checksums, safetensors); the task names."""
    manifest = read_manifest(directory)
    for record in manifest["tasks"]:
        read_task_file(directory, record["file"], record["sha256"])
    assert_no_leftovers(directory)
    return [record["name"] for record in manifest["tasks"]]


@pytest.mark.parametrize("wait", [False, True], ids=["no-wait", "wait"])
def test_two_cli_learns_on_one_pool_at_once(server, tmp_path, wait):
    colours = tmp_path / "colours.csv"
    colours.write_text("text,label\n" + "\n".join(COLOURS) + "\n")
    animals = tmp_path / "animals.jsonl"
    animals.write_text("".join(json.dumps({"text": t, "label": g}) + "\n" for t, g in ANIMALS))
    pool = tmp_path / "pool"
    runs = {}
    for task, data in (("colours", colours), ("animals", animals)):
        argv = [
            "learn",
            str(pool),
            "--task",
            task,
            "--train",
            str(data),
            "--epochs",
            "1",
            "--prompt-length",
            "4",
            "--no-progress",
            *(["--wait", "300"] if wait else []),
        ]
        log = tmp_path / f"{task}.log"
        runs[task] = (server.spawn(log, kind="cli", argv=argv), log)
    codes = {task: server.wait(pid, timeout=300) for task, (pid, _) in runs.items()}
    logs = {task: log.read_text() for task, (_, log) in runs.items()}
    if wait:
        assert codes == {"colours": 0, "animals": 0}, logs
    else:
        assert sorted(codes.values()) in ([0, 2], [0, 0]), logs
    for task, code in codes.items():
        if code == 2:  # the loser says why, and what to do
            assert "error:" in logs[task] and "another process is changing this pool" in logs[task]
            assert "--wait" in logs[task]
        else:
            assert json.loads(logs[task].strip().splitlines()[-1])["task"] == task
    learned = sorted(task for task, code in codes.items() if code == 0)
    assert sorted(_check_saved_pool(pool)) == learned


# -- determinism across fresh processes ----------------------------------------------------------


def test_same_seed_gives_bit_identical_files_and_predictions_in_fresh_processes(
    reference, tmp_path
):
    """Two new interpreters (no fork), run side by side: the same task files, byte for byte, as
    each other and as the fork server's reference, and the same predictions."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "run",
                str(tmp_path / f"pool-{i}"),
                "--tasks",
                "3",
                "--predict",
            ],
            cwd=ROOT,
            env=_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    hashes = []
    for i in range(2):
        manifest = json.loads((tmp_path / f"pool-{i}" / MANIFEST).read_text())
        hashes.append(
            {
                record["name"]: hashlib.sha256(
                    (tmp_path / f"pool-{i}" / record["file"]).read_bytes()
                ).hexdigest()
                for record in manifest["tasks"]
            }
        )
    expected = {name: reference.records[name]["sha256"] for name in TASKS[:3]}
    assert hashes[0] == hashes[1] == expected
    predictions = [
        next(line for line in out.splitlines() if line.startswith("predictions "))
        for out, _ in outputs
    ]
    assert predictions[0] == predictions[1]
    assert len(json.loads(predictions[0].split(" ", 1)[1])) == len(worker.PROBES)
