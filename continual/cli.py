"""The ``continual`` command line: learn, predict, evaluate, info, explain, run, plot, serve,
remove, export, import.

Each command checks its arguments, calls the library (`continual.manage` for the verbs on a
pool folder) and prints; the parser is `continual.cli_parser`. Errors in the user's input print
one line naming the file, row or field, and exit with code 2. Any other failure prints one line
and exits with code 1; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .cli_parser import EXIT_USAGE, build_parser
from .errors import ContinualError
from .extras import require
from .terminal import one_line, printable, strict_json

if TYPE_CHECKING:
    from .pool import PromptPool

EXIT_FAILURE = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_text_arguments(args)
        return COMMANDS[args.command](args) or 0
    except ContinualError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {one_line(where + str(error.strerror or error))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; the pool on disk is as it was last saved", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line, the traceback only when asked for
        if getattr(args, "debug", False):
            traceback.print_exc()
        detail = one_line(f"{type(error).__name__}: {error}")[:500]
        print(
            f"error: unexpected failure ({detail}); this is a bug in continual, please "
            "report it with the command that caused it (rerun with --debug for the "
            "traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _check_text_arguments(args: argparse.Namespace) -> None:
    """Refuse texts and names that are not valid UTF-8 (bytes the shell passed undecoded).

    ``remove --task`` is spared: a name an older version let in is taken out as it was typed.
    """
    named = {"task": "--task", "backbone": "--backbone", "name": "--as"}
    if args.command == "remove":
        del named["task"]
    for key, option in named.items():
        value = getattr(args, key, None)
        if isinstance(value, str):
            _utf8(value, option)
    for number, text in enumerate(getattr(args, "texts", None) or [], start=1):
        _utf8(text, f"text argument {number}")


def _utf8(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = ord(value[error.start]) & 0xFF
        raise ContinualError(
            f"{what} is not valid UTF-8 (byte 0x{byte:02x} at character "
            f"{error.start}); pass text encoded as UTF-8"
        ) from None


def _check_wait(wait: float) -> None:
    if wait < 0 or not math.isfinite(wait):
        raise ContinualError(f"--wait must be 0 or more seconds, got {wait}")


def _load_pool(args: argparse.Namespace) -> PromptPool:
    from .pool import PromptPool

    return PromptPool.load(
        args.pool,
        getattr(args, "backbone", None),
        device=getattr(args, "device", "cpu"),
        dtype=getattr(args, "dtype", None),
    )


def _learn(args: argparse.Namespace) -> int:
    """``continual learn``; under torchrun or ``accelerate launch`` every process trains the
    task data-parallel and rank 0 alone writes the pool (see `manage.learn_into_folder`)."""
    import dataclasses

    from . import distributed
    from .data import Task
    from .format import check_task_name
    from .manage import NewPoolSettings, learn_into_folder
    from .storage import check_pool_folder
    from .trainer import check_seed

    check_task_name(args.task, "--task")
    check_seed(args.seed, "--seed")
    if args.epochs is not None and args.epochs < 1:
        raise ContinualError(f"--epochs must be at least 1, got {args.epochs}")
    _check_wait(args.wait)
    check_pool_folder(args.pool)  # before reading data: refuse a folder that is not a pool's
    task = Task.from_files(
        args.task,
        args.train,
        args.test,
        args.validation,
        kind=args.kind,
        metric=args.metric,
        max_new_tokens=args.max_new_tokens,
        stop=args.stop,
        seed=args.seed,
    )
    # The options for a new pool are named as the settings' fields.
    fields = dataclasses.fields(NewPoolSettings)
    new_pool = NewPoolSettings(**{field.name: getattr(args, field.name) for field in fields})
    learned = learn_into_folder(
        args.pool,
        task,
        backbone=args.backbone,
        new_pool=new_pool,
        device=args.device,
        dtype=args.dtype,
        epochs=args.epochs,
        seed=args.seed,
        resume=args.resume,
        wait=args.wait,
        progress=not args.no_progress,
    )
    entry, score = learned.entry, learned.score
    if entry is None:
        if learned.rank == 0:
            print(f"task {args.task!r} is already in {args.pool}; nothing to do", file=sys.stderr)
        return 0
    if learned.rank != 0:
        digest = distributed.digest((entry.prompt, entry.head_weight, entry.head_bias))
        print(
            f"rank {learned.rank} of {learned.world_size}: trained task "
            f"{printable(entry.name)!r} with rank 0, which saved the pool (prompt and "
            f"head sha256 {digest})",
            file=sys.stderr,
        )
        return 0
    routing = score.routing_accuracy if score else None
    print(
        strict_json(
            {
                "pool": str(args.pool),
                "task": entry.name,
                "labels": entry.labels,
                "metric": "accuracy" if score is None else score.metric,
                "accuracy": None if score is None else round(score.accuracy, 2),
                "routing_accuracy": None if routing is None else round(routing, 2),
                "train_seconds": entry.stats["train_seconds"],
            }
        )
    )
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
    predictions = pool.predict(texts, tasks=args.task, min_score=args.min_score, refuse=args.refuse)
    for prediction in predictions:
        print(strict_json(prediction.to_dict(), ensure_ascii=False))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .manage import evaluate_file

    score = evaluate_file(_load_pool(args), args.task, args.test, oracle=args.oracle)
    if args.json:
        print(strict_json(score.to_dict()))
    else:
        unit = "%" if score.metric == "accuracy" else ""
        line = f"{score.task}: {score.metric} {score.accuracy:.2f}{unit} on {score.examples}"
        if score.routing_accuracy is not None:
            line += f", routing accuracy {score.routing_accuracy:.2f}%"
        print(line)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .manage import pool_info

    info = pool_info(args.pool)
    if args.json:
        print(strict_json(info.to_dict(), indent=2))
        return 0
    # Names come from the manifest: escaped, so a name cannot drive the terminal.
    print(
        f"{printable(str(args.pool))}: {len(info.tasks)} task(s) on "
        f"{printable(str(info.backbone))} (width {info.hidden_size}, prompt length "
        f"{info.prompt_length}, selector {printable(str(info.selector.get('name')))})"
    )
    for task in info.tasks:
        size = "?" if task.bytes is None else f"{task.bytes / 1000:.1f} KB"
        if task.generation is not None:
            answers = f"text-to-text ({printable(str(task.generation.get('metric')))})"
        else:
            labels = "[" + ", ".join(printable(repr(label)) for label in task.labels) + "]"
            answers = f"{len(task.labels)} labels {labels}"
        print(f"  {printable(str(task.name))}: {answers}, {size}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain_routing, nearest_tokens, prompt_similarity

    if args.tokens < 0:
        raise ContinualError(f"--tokens must be 0 or more, got {args.tokens}")

    pool = _load_pool(args)
    vocabulary = int(pool.backbone.embedding_matrix.shape[0])
    if args.tokens > vocabulary:
        raise ContinualError(
            f"--tokens must be at most the vocabulary size {vocabulary}, got {args.tokens}"
        )
    similarity = prompt_similarity(pool)
    print("prompt similarity (cosine):")
    for name, row in zip(pool.tasks, similarity.tolist()):
        print(f"  {printable(name):>16}: " + " ".join(f"{value:5.2f}" for value in row))
    if args.tokens and pool.placement.deep:
        print("nearest tokens: not for deep prompts (their vectors are middle-layer states)")
    elif args.tokens:
        for name in pool.tasks:
            print(f"nearest tokens of {printable(name)}'s prompt vectors:")
            for position, tokens in enumerate(nearest_tokens(pool, name, args.tokens)):
                print(
                    f"  {position:>3}: " + ", ".join(f"{printable(t)} ({s:.2f})" for t, s in tokens)
                )
    for item in explain_routing(pool, args.texts):
        print(strict_json(item, ensure_ascii=False))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .bench.cli import run_from_args

    return run_from_args(args)


def _plot(args: argparse.Namespace) -> int:
    from .bench.cli import plot_from_args

    return plot_from_args(args)


def _serve(args: argparse.Namespace) -> int:
    require("serve", "continual serve")
    from .serve import run_server

    if not 0 <= args.port <= 65535:
        raise ContinualError(f"--port must be in 0..65535, got {args.port}")
    for option, count in (
        ("--max-batch", args.max_batch),
        ("--max-batch-tokens", args.max_batch_tokens),
        ("--max-texts", args.max_texts),
    ):
        if count < 1:
            raise ContinualError(f"{option} must be at least 1, got {count}")
    for option, value in (("--poll", args.poll), ("--max-wait-ms", args.max_wait_ms)):
        if not math.isfinite(value) or value < 0 or (option == "--poll" and value == 0):
            raise ContinualError(f"{option} must be a positive number, got {value}")
    run_server(
        args.pool,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_batch_tokens=args.max_batch_tokens,
        max_wait=args.max_wait_ms / 1000.0,
        max_texts=args.max_texts,
        poll_interval=args.poll,
        threads=args.threads,
        backbone=args.backbone,
        device=args.device,
        dtype=args.dtype,
        docs=args.docs,
    )
    return 0


def _remove(args: argparse.Namespace) -> int:
    from .manage import remove_task

    _check_wait(args.wait)
    record = remove_task(args.pool, args.task, wait=args.wait)
    print(strict_json({"pool": str(args.pool), "removed": record["name"]}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .manage import export_task

    path = export_task(args.pool, args.task, args.out, force=args.force)
    print(
        strict_json(
            {
                "pool": str(args.pool),
                "task": args.task,
                "file": str(path),
                "bytes": path.stat().st_size,
            }
        )
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from .format import check_task_name
    from .manage import import_task

    _check_wait(args.wait)
    if args.name is not None:
        check_task_name(args.name, "--as")
    entry = import_task(args.pool, args.file, name=args.name, wait=args.wait)
    print(strict_json({"pool": str(args.pool), "task": entry.name, "labels": entry.labels}))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "learn": _learn,
    "predict": _predict,
    "evaluate": _evaluate,
    "info": _info,
    "explain": _explain,
    "run": _run,
    "plot": _plot,
    "serve": _serve,
    "remove": _remove,
    "export": _export,
    "import": _import,
}


if __name__ == "__main__":
    sys.exit(main())
