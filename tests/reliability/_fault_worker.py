"""Worker process for tests/test_fault_injection.py (not a test module).

It learns a fixed sequence of small synthetic tasks into a pool on the tiny random BERT (seed 0,
so every process has the same weights), saving after each task, and skips the tasks the pool
already holds, so a killed run can be resumed. Each step is announced on stdout, flushed:

    start                      the backbone is built
    loaded <task,task,...>     the pool as found on disk
    learning <task>
    saving <task> <i>          PromptPool.save is about to run (several saves per task widen
    saved <task> <i>           the window a kill can land in); "saved" once save returned
    done
    predictions <json>         with --predict: labels and scores of fixed probe texts

Usage:
    python tests/_fault_worker.py run POOL [--tasks N] [--saves K] [--predict]
    python tests/_fault_worker.py serve

``serve`` imports torch, transformers and continual once, prints ``ready``, then reads one JSON
command per line on stdin and answers one JSON line per command:

    {"op": "spawn", "log": PATH, "kind": "learn", "pool": POOL, "tasks": N, "saves": K}
    {"op": "spawn", "log": PATH, "kind": "lock", "pool": POOL, "hold": SECONDS}
    {"op": "spawn", "log": PATH, "kind": "cli", "argv": [...]}       -> {"pid": PID}
    {"op": "wait", "pid": PID}                           -> {"pid": PID, "code": EXIT_CODE}
    {"op": "quit"}

Each spawn forks a child process that writes its stdout and stderr to the log file and exits;
the test kills children with SIGKILL. Forking skips the ~10 s import of torch and transformers
per run, so dozens of kills fit in a short test. The parent never runs a torch operation, so
the children start from a clean state (no thread pools to inherit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

WORDS = {
    "colours": {
        "warm": ["red", "orange", "yellow", "gold", "pink", "amber"],
        "cool": ["blue", "green", "purple", "cyan", "teal", "navy"],
    },
    "animals": {
        "pet": ["dog", "cat", "hamster", "rabbit", "parrot", "kitten"],
        "wild": ["lion", "tiger", "wolf", "bear", "eagle", "shark"],
    },
    "weather": {
        "wet": ["rain", "drizzle", "storm", "flood", "hail", "sleet"],
        "dry": ["sun", "drought", "heat", "dust", "desert", "glare"],
    },
    "food": {
        "sweet": ["cake", "candy", "honey", "jam", "fudge", "syrup"],
        "salty": ["chips", "pretzel", "olive", "bacon", "anchovy", "salami"],
    },
    "sport": {
        "ball": ["football", "tennis", "golf", "rugby", "hockey", "cricket"],
        "water": ["swimming", "rowing", "sailing", "diving", "surfing", "kayak"],
    },
    "music": {
        "string": ["violin", "guitar", "cello", "harp", "banjo", "viola"],
        "wind": ["flute", "trumpet", "oboe", "clarinet", "tuba", "horn"],
    },
}
TASK_NAMES = list(WORDS)
ENDINGS = ["here", "there", "today", "again", "now", "outside"]
PROBES = [
    "the red and the gold here",
    "a wolf and a bear today",
    "rain and hail again",
    "cake with honey now",
    "the violin and the flute",
    "rowing and sailing outside",
]


def say(*words) -> None:
    # One write per line: print() hands its pieces to the stream one by one, and a SIGKILL
    # between them left torn lines such as "saved " (no task) for the test to misread.
    sys.stdout.flush()
    os.write(1, (" ".join(str(word) for word in words) + "\n").encode())


def tasks(count: int):
    from continual import Task

    result = []
    for name in TASK_NAMES[:count]:
        pairs = []
        for label, words in WORDS[name].items():
            for i, first in enumerate(words):
                for j, second in enumerate(words):
                    if i != j and (i + j) % 2 == 0:
                        pairs.append(
                            (f"the {first} and the {second} {ENDINGS[(i + j) % 6]}", label)
                        )
        result.append(Task.from_pairs(name, pairs, seed=0))
    return result


def tiny_backbone():
    """The tests' tiny backbone (tests/conftest.py): 2 layers, width 32, seed 0."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import continual
    from continual import Backbone

    tokenizer = AutoTokenizer.from_pretrained(continual.backbone.default_model_path())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return Backbone(BertModel(config), tokenizer, "tiny-bert", max_length=32)


def learn(pool_dir: str, count: int, saves: int, predict: bool = False) -> int:
    import torch

    from continual import PromptPool, TrainingConfig
    from continual.pool_lock import PoolLock
    from continual.storage import MANIFEST

    torch.set_num_threads(1)  # the same arithmetic in every process: bit-identical results
    backbone = tiny_backbone()
    say("start")
    with PoolLock(pool_dir, timeout=60):
        if os.path.exists(os.path.join(pool_dir, MANIFEST)):
            pool = PromptPool.load(pool_dir, backbone)
        else:
            pool = PromptPool(backbone, prompt_length=4, training=TrainingConfig(epochs=1))
        say("loaded", ",".join(pool.tasks))
        for task in tasks(count):
            if task.name in pool.tasks:
                say("skip", task.name)
                continue
            say("learning", task.name)
            pool.learn(task, seed=0, progress=False)
            for attempt in range(saves):
                say("saving", task.name, attempt)
                pool.save(pool_dir, lock=False)  # this process holds the lock already
                say("saved", task.name, attempt)
        say("done")
        if predict:
            answers = [[p.task, p.label, p.score, p.routing_score] for p in pool.predict(PROBES)]
            say("predictions", json.dumps(answers))
    return 0


def hold_lock(pool_dir: str, hold: float) -> int:
    from continual.pool_lock import PoolLock

    with PoolLock(pool_dir, timeout=0):
        say("locked")
        time.sleep(hold)
        say("releasing")
    return 0


def cli(argv: list[str]) -> int:
    import torch

    from continual.cli import main

    torch.set_num_threads(1)
    return main(argv)


def child(command: dict) -> None:
    """Runs in the forked child: never returns."""
    code = 1
    try:
        log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        kind = command["kind"]
        if kind == "learn":
            code = learn(
                command["pool"], command["tasks"], command["saves"], command.get("predict", False)
            )
        elif kind == "lock":
            code = hold_lock(command["pool"], command["hold"])
        elif kind == "cli":
            code = cli(command["argv"])
        else:
            say(f"unknown kind {kind!r}")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> int:
    # Import everything the children use, but run no torch operation here.
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel  # noqa: F401

    import continual.cli
    import continual.pool  # noqa: F401

    say("ready")
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "spawn":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(command)
            say(json.dumps({"pid": pid}))
        elif command["op"] == "wait":
            _, status = os.waitpid(command["pid"], 0)
            say(json.dumps({"pid": command["pid"], "code": os.waitstatus_to_exitcode(status)}))
        elif command["op"] == "quit":
            break
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("pool")
    run.add_argument("--tasks", type=int, default=len(TASK_NAMES))
    run.add_argument("--saves", type=int, default=1)
    run.add_argument("--predict", action="store_true")
    commands.add_parser("serve")
    args = parser.parse_args()
    if args.command == "serve":
        return serve()
    return learn(args.pool, args.tasks, args.saves, args.predict)


if __name__ == "__main__":
    sys.exit(main())
