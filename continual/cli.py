"""The ``continual`` command line: learn, predict, evaluate, info, explain, run, plot.

Errors in the user's input print one line naming the file, row or field, and exit with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ContinualError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except ContinualError as error:
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; the pool on disk is as it was last saved", file=sys.stderr)
        return 130


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="continual",
        description="Continual learning with a growing pool of soft prompts over a frozen model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    learn = commands.add_parser("learn", help="add one task to a pool (created if missing)")
    learn.add_argument("pool", type=Path)
    learn.add_argument("--task", required=True, help="name of the new task")
    learn.add_argument("--train", required=True, type=Path, help="CSV/JSONL with text,label")
    learn.add_argument("--test", type=Path, help="held-out CSV/JSONL (default: 20%% of --train)")
    learn.add_argument("--validation", type=Path, help="CSV/JSONL for early stopping")
    learn.add_argument("--epochs", type=int, help="training epochs at most for this task "
                       "(default: the pool's, 6 for a new pool)")
    learn.add_argument("--seed", type=int, default=0)
    learn.add_argument("--prompt-length", type=int, default=16, help="for a new pool")
    learn.add_argument("--selector", default="gaussian", choices=["gaussian", "prototypes", "keys"],
                       help="for a new pool")
    learn.add_argument("--backbone", help="HF model name, folder or .gguf file for a new pool "
                       "(default: the packaged all-MiniLM-L6-v2); encoders (BERT, RoBERTa, "
                       "DistilBERT, T5) and decoder LMs (Llama, GPT-2, Qwen2...)")
    learn.add_argument("--max-length", type=int, default=128,
                       help="for a new pool: tokens per input, prompt not counted")
    learn.add_argument("--pooling", choices=["mean", "last"],
                       help="for a new pool: features from the mean of the input's tokens "
                       "(default) or the last one (default with --head verbalizer)")
    learn.add_argument("--head", choices=["linear", "verbalizer"], default="linear",
                       help="for a new pool: a trained linear head, or (language models) the "
                       "label words scored with the LM's output embeddings")
    _add_device_arguments(learn)
    learn.add_argument("--resume", action="store_true",
                       help="skip, without error, a task the pool already holds")
    learn.add_argument("--wait", type=float, default=0.0,
                       help="seconds to wait for another process that holds the pool")
    learn.add_argument("--no-progress", action="store_true")
    learn.set_defaults(handler=_learn)

    predict = commands.add_parser("predict", help="label texts; one JSON object per line")
    predict.add_argument("pool", type=Path)
    predict.add_argument("texts", nargs="*", help="texts to label")
    predict.add_argument("--file", type=Path, help="CSV/JSONL with a text column, or plain text")
    predict.add_argument("--task", help="skip routing: send every text to this task")
    _add_device_arguments(predict)
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="accuracy and routing accuracy on a file")
    evaluate.add_argument("pool", type=Path)
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--test", required=True, type=Path)
    evaluate.add_argument("--oracle", action="store_true", help="give the task id (no routing)")
    evaluate.add_argument("--json", action="store_true")
    _add_device_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    info = commands.add_parser("info", help="tasks, labels and sizes of a pool")
    info.add_argument("pool", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_info)

    explain = commands.add_parser("explain", help="why texts went where they went, "
                                  "and what the prompts resemble")
    explain.add_argument("pool", type=Path)
    explain.add_argument("texts", nargs="*")
    explain.add_argument("--tokens", type=int, default=0,
                         help="also show the N vocabulary tokens nearest each prompt vector")
    explain.set_defaults(handler=_explain)

    from .bench.cli import add_run_arguments

    run = commands.add_parser("run", help="run a benchmark: methods over a task sequence")
    add_run_arguments(run)
    run.set_defaults(handler=_run)

    plot = commands.add_parser("plot", help="draw the plots of a benchmark result folder")
    plot.add_argument("dir", type=Path)
    plot.set_defaults(handler=_plot)
    return parser


def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:1... or auto (the GPU if there is one)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="precision of the frozen backbone (prompts and heads stay "
                        "float32); default float32 for a new pool, else the pool's own")


def _load_pool(args: argparse.Namespace):
    from .pool import PromptPool

    return PromptPool.load(args.pool, device=args.device, dtype=args.dtype)


def _learn(args: argparse.Namespace) -> int:
    from .backbone import Backbone
    from .data import Task
    from .learner import TrainingConfig
    from .pool import PromptPool
    from .storage import MANIFEST, PoolLock

    task = Task.from_files(args.task, args.train, args.test, args.validation, seed=args.seed)
    with PoolLock(args.pool, timeout=args.wait):
        if (args.pool / MANIFEST).exists():
            pool = _load_pool(args)
            if args.task in pool.tasks:
                if args.resume:
                    print(f"task {args.task!r} is already in {args.pool}; nothing to do",
                          file=sys.stderr)
                    return 0
                raise ContinualError(
                    f"task {args.task!r} is already in {args.pool}; choose another --task name"
                )
        else:
            backbone = Backbone.load(args.backbone, max_length=args.max_length,
                                     device=args.device,
                                     dtype=args.dtype or "float32",
                                     pooling=args.pooling or (
                                         "last" if args.head == "verbalizer" else None))
            pool = PromptPool(
                backbone,
                prompt_length=args.prompt_length,
                selector=args.selector,
                training=TrainingConfig(head=args.head),
            )
        training = None
        if args.epochs is not None:
            if args.epochs < 1:
                raise ContinualError(f"--epochs must be at least 1, got {args.epochs}")
            training = dataclasses.replace(pool.training, epochs=args.epochs)
        entry = pool.learn(task, seed=args.seed, progress=not args.no_progress,
                           training=training)
        pool.save(args.pool, lock=False)  # this process holds the lock already
        result = pool.evaluate(task) if task.test else None
    routing = result.routing_accuracy if result else None
    print(json.dumps({"pool": str(args.pool), "task": entry.name, "labels": entry.labels,
                      "accuracy": None if result is None else round(result.accuracy, 2),
                      "routing_accuracy": None if routing is None else round(routing, 2),
                      "train_seconds": entry.stats["train_seconds"]}))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .data import read_texts

    texts = list(args.texts)
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise ContinualError(f"text argument {number} is empty")
    if args.file is not None:
        texts += read_texts(args.file)
    if not texts:
        raise ContinualError("nothing to predict: give texts or --file")
    pool = _load_pool(args)
    for prediction in pool.predict(texts, tasks=args.task):
        print(json.dumps(prediction.to_dict(), ensure_ascii=False))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import read_labelled

    pool = _load_pool(args)
    result = pool.evaluate(args.task, read_labelled(args.test), oracle=args.oracle)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        line = f"{result.task}: accuracy {result.accuracy:.2f}% on {result.examples}"
        if result.routing_accuracy is not None:
            line += f", routing accuracy {result.routing_accuracy:.2f}%"
        print(line)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .storage import read_entries, read_manifest

    manifest = read_manifest(args.pool)
    read_entries(args.pool, manifest)  # every record, file and checksum, before printing
    hidden, length = manifest["hidden_size"], manifest["prompt_length"]
    tasks = []
    for record in manifest["tasks"]:
        path = args.pool / str(record.get("file", ""))
        tasks.append({
            "name": record.get("name"),
            "labels": record.get("labels"),
            "bytes": path.stat().st_size if path.is_file() else None,
            "stats": record.get("stats", {}),
        })
    summary = {
        "pool": str(args.pool),
        "backbone": manifest["backbone"].get("name"),
        "hidden_size": hidden,
        "prompt_length": length,
        "selector": manifest["selector"],
        "tasks": tasks,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.pool}: {len(tasks)} task(s) on {summary['backbone']} "
          f"(width {hidden}, prompt length {length}, selector {manifest['selector'].get('name')})")
    for task in tasks:
        size = "?" if task["bytes"] is None else f"{task['bytes'] / 1000:.1f} KB"
        print(f"  {task['name']}: {len(task['labels'])} labels {task['labels']}, {size}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain_routing, nearest_tokens, prompt_similarity
    from .pool import PromptPool

    if args.tokens < 0:
        raise ContinualError(f"--tokens must be 0 or more, got {args.tokens}")

    pool = PromptPool.load(args.pool)
    similarity = prompt_similarity(pool)
    print("prompt similarity (cosine):")
    for name, row in zip(pool.tasks, similarity.tolist()):
        print(f"  {name:>16}: " + " ".join(f"{value:5.2f}" for value in row))
    if args.tokens:
        for name in pool.tasks:
            print(f"nearest tokens of {name}'s prompt vectors:")
            for position, tokens in enumerate(nearest_tokens(pool, name, args.tokens)):
                print(f"  {position:>3}: " + ", ".join(f"{t} ({s:.2f})" for t, s in tokens))
    for item in explain_routing(pool, args.texts):
        print(json.dumps(item, ensure_ascii=False))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .bench.cli import run_from_args

    return run_from_args(args)


def _plot(args: argparse.Namespace) -> int:
    from .bench.cli import plot_from_args

    return plot_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
