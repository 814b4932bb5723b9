"""The ``continual`` command line: learn, predict, evaluate, info, explain, run, plot, serve,
remove, export, import.

Errors in the user's input print one line naming the file, row or field, and exit with code 2.
Any other failure prints one line and exits with code 1; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ContinualError
from .extras import require
from .metrics import TASK_METRICS
from .options import add_device_options, add_placement_option, add_run_options
from .selector import DEFAULT_SELECTOR, SELECTORS

EXIT_USAGE = 2
EXIT_FAILURE = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check_text_arguments(args)
        return args.handler(args) or 0
    except ContinualError as error:
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {_one_line(where + str(error.strerror or error))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; the pool on disk is as it was last saved", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line, the traceback only when asked for
        if getattr(args, "debug", False):
            traceback.print_exc()
        detail = _one_line(f"{type(error).__name__}: {error}")[:500]
        print(
            f"error: unexpected failure ({detail}); this is a bug in continual, please "
            "report it with the command that caused it (rerun with --debug for the "
            "traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _one_line(message: str) -> str:
    return _printable(" ".join(message.split()))


def _printable(text: str) -> str:
    """``text`` with control, other non-printable and undecodable characters escaped."""
    return "".join(
        character if character.isprintable() else _escape(character) for character in text
    )


def _escape(character: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogate escape)
        return f"\\x{code - 0xDC00:02x}"
    return character.encode("unicode_escape").decode("ascii")


def _json(value: Any, **options: Any) -> str:
    """``value`` as strict JSON: a non-finite number (NaN, infinity) is written as null."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {_one_line(message)} (see '{self.prog} --help')\n")


def _add_wait_argument(parser: argparse.ArgumentParser) -> None:
    """``--wait``, for the commands that change a pool (checked by `_check_wait`)."""
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="seconds to wait for another process that holds the pool",
    )


def _check_wait(wait: float) -> None:
    if wait < 0 or not math.isfinite(wait):
        raise ContinualError(f"--wait must be 0 or more seconds, got {wait}")


def _path(value: str) -> Path:
    if not value:
        raise argparse.ArgumentTypeError("empty path; give a file or folder name")
    return Path(value)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="continual",
        description="Continual learning with a growing pool of soft prompts over a frozen model.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an unexpected failure"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an unexpected failure",
    )
    backbone_help = (
        "the backbone to load the pool with (a model folder or hub name); needed "
        "when the pool names a local model, and checked against the pool's"
    )

    learn = commands.add_parser(
        "learn", help="add one task to a pool (created if missing)", parents=[common]
    )
    learn.add_argument("pool", type=_path)
    learn.add_argument("--task", required=True, help="name of the new task")
    learn.add_argument(
        "--train",
        required=True,
        type=_path,
        help="CSV/JSONL with text,label (a label task) or text,target (a text-to-text task)",
    )
    learn.add_argument("--test", type=_path, help="held-out CSV/JSONL (default: 20%% of --train)")
    learn.add_argument("--validation", type=_path, help="CSV/JSONL for early stopping")
    learn.add_argument(
        "--epochs",
        type=int,
        help="training epochs at most for this task (default: the pool's, 6 for a new pool)",
    )
    learn.add_argument("--prompt-length", type=int, default=16, help="for a new pool")
    learn.add_argument(
        "--selector",
        choices=[name for name in SELECTORS if name != "oracle"],
        help=f"for a new pool (default: {DEFAULT_SELECTOR})",
    )
    add_placement_option(learn, default="input", what="a new pool")
    learn.add_argument(
        "--backbone",
        help="HF model name, folder or .gguf file for a new pool "
        "(default: the packaged all-MiniLM-L6-v2); encoders (BERT, RoBERTa, "
        "DistilBERT, T5) and decoder LMs (Llama, GPT-2, Qwen2...); for an existing "
        "pool, " + backbone_help,
    )
    learn.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="for a new pool: tokens per input, prompt not counted",
    )
    learn.add_argument(
        "--pooling",
        choices=["mean", "last"],
        help="for a new pool: features from the mean of the input's tokens "
        "(default) or the last one (default with --head verbalizer)",
    )
    learn.add_argument(
        "--head",
        choices=["linear", "verbalizer"],
        default="linear",
        help="for a new pool: a trained linear head, or (language models) the "
        "label words scored with the LM's output embeddings",
    )
    learn.add_argument(
        "--kind",
        choices=["classify", "generate"],
        help="which column the task learns where --train has both 'label' and 'target' "
        "(default: the one it has)",
    )
    learn.add_argument(
        "--metric",
        choices=list(TASK_METRICS),
        default="exact_match",
        help="text-to-text tasks: how answers are scored (validation and evaluate)",
    )
    learn.add_argument(
        "--max-new-tokens",
        type=int,
        help="text-to-text tasks: tokens generated at most (default: from the longest target)",
    )
    learn.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="text-to-text tasks: a text that ends an answer (repeatable)",
    )
    add_device_options(learn, dtype_default=None)
    learn.add_argument(
        "--resume", action="store_true", help="skip, without error, a task the pool already holds"
    )
    _add_wait_argument(learn)
    add_run_options(learn)
    learn.set_defaults(handler=_learn)

    predict = commands.add_parser(
        "predict",
        help="label texts or write answers; one JSON object per line "
        "(text, task, label, output, score)",
        parents=[common],
    )
    predict.add_argument("pool", type=_path)
    predict.add_argument("texts", nargs="*", help="texts to label")
    predict.add_argument("--file", type=_path, help="CSV/JSONL with a text column, or plain text")
    predict.add_argument("--task", help="skip routing: send every text to this task")
    predict.add_argument(
        "--min-score",
        type=float,
        help="refuse (task and label null) texts "
        "whose routing score is below this, on the selector's scale",
    )
    predict.add_argument(
        "--refuse",
        type=float,
        metavar="SHARE",
        help="calibrated refusal: refuse texts that match their task worse than this share "
        "(0.01 to 0.2) of the task's own held-out inputs did",
    )
    predict.add_argument("--backbone", help=backbone_help)
    add_device_options(predict, dtype_default=None)
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy and routing accuracy on a file", parents=[common]
    )
    evaluate.add_argument("pool", type=_path)
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--test", required=True, type=_path)
    evaluate.add_argument("--backbone", help=backbone_help)
    evaluate.add_argument("--oracle", action="store_true", help="give the task id (no routing)")
    evaluate.add_argument("--json", action="store_true")
    add_device_options(evaluate, dtype_default=None)
    evaluate.set_defaults(handler=_evaluate)

    info = commands.add_parser("info", help="tasks, labels and sizes of a pool", parents=[common])
    info.add_argument("pool", type=_path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_info)

    explain = commands.add_parser(
        "explain",
        help="why texts went where they went, and what the prompts resemble",
        parents=[common],
    )
    explain.add_argument("pool", type=_path)
    explain.add_argument("texts", nargs="*")
    explain.add_argument(
        "--tokens",
        type=int,
        default=0,
        help="also show the N vocabulary tokens nearest each prompt vector",
    )
    explain.add_argument("--backbone", help=backbone_help)
    add_device_options(explain, dtype_default=None)
    explain.set_defaults(handler=_explain)

    from .bench.cli import add_run_arguments

    run = commands.add_parser(
        "run", help="run a benchmark: methods over a task sequence", parents=[common]
    )
    add_run_arguments(run)
    run.set_defaults(handler=_run)

    plot = commands.add_parser(
        "plot", help="draw the plots of a benchmark result folder", parents=[common]
    )
    plot.add_argument("dir", type=_path)
    plot.set_defaults(handler=_plot)
    _add_manage_parsers(commands, common)
    return parser


def _load_pool(args: argparse.Namespace):
    from .pool import PromptPool

    return PromptPool.load(
        args.pool,
        getattr(args, "backbone", None),
        device=getattr(args, "device", "cpu"),
        dtype=getattr(args, "dtype", None),
    )


def _learn(args: argparse.Namespace) -> int:
    """``continual learn``; under torchrun or ``accelerate launch`` every process trains the
    task data-parallel and rank 0 alone writes the pool (see `continual.distributed`)."""
    from . import distributed
    from .format import check_task_name
    from .trainer import check_seed

    check_task_name(args.task, "--task")
    check_seed(args.seed, "--seed")
    if args.epochs is not None and args.epochs < 1:
        raise ContinualError(f"--epochs must be at least 1, got {args.epochs}")
    _check_wait(args.wait)
    if not distributed.launched():
        return _learn_task(args)
    args.device = str(distributed.rank_device(args.device))
    distributed.init(args.device)
    try:
        return _learn_task(args)
    finally:
        distributed.teardown()


def _learn_task(args: argparse.Namespace) -> int:
    from . import distributed
    from .backbone import Backbone
    from .data import Task
    from .learner import TrainingConfig
    from .pool import PromptPool
    from .pool_lock import PoolLock
    from .storage import MANIFEST, check_pool_folder

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
    main = distributed.is_main()
    # Rank 0 alone takes the lock and writes; the other ranks only read an existing pool (its
    # settings and backbone), after the barrier, so while rank 0 holds the lock.
    with PoolLock(args.pool, timeout=args.wait) if main else contextlib.nullcontext():
        distributed.barrier()
        if (args.pool / MANIFEST).exists():
            pool = _load_pool(args)
            if args.task in pool.tasks:
                if args.resume:
                    if main:
                        print(
                            f"task {args.task!r} is already in {args.pool}; nothing to do",
                            file=sys.stderr,
                        )
                    return 0
                raise ContinualError(
                    f"task {args.task!r} is already in {args.pool}; choose another --task name"
                )
        else:
            backbone = Backbone.load(
                args.backbone,
                max_length=args.max_length,
                device=args.device,
                dtype=args.dtype or "float32",
                pooling=args.pooling or ("last" if args.head == "verbalizer" else None),
            )
            pool = PromptPool(
                backbone,
                prompt_length=args.prompt_length,
                placement=args.placement,
                selector=args.selector,
                training=TrainingConfig(head=args.head),
            )
        training = None
        if args.epochs is not None:
            training = dataclasses.replace(pool.training, epochs=args.epochs)
        entry = pool.learn(task, seed=args.seed, progress=not args.no_progress, training=training)
        if main:
            pool.save(args.pool, lock=False)  # this process holds the lock already
        distributed.barrier()
        if not main:
            digest = distributed.digest((entry.prompt, entry.head_weight, entry.head_bias))
            print(
                f"rank {distributed.rank()} of {distributed.world_size()}: trained task "
                f"{_printable(entry.name)!r} with rank 0, which saved the pool (prompt and "
                f"head sha256 {digest})",
                file=sys.stderr,
            )
            return 0
        result = pool.evaluate(task) if task.test else None
    routing = result.routing_accuracy if result else None
    print(
        _json(
            {
                "pool": str(args.pool),
                "task": entry.name,
                "labels": entry.labels,
                "metric": "accuracy" if result is None else result.metric,
                "accuracy": None if result is None else round(result.accuracy, 2),
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
        print(_json(prediction.to_dict(), ensure_ascii=False))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import read_examples
    from .format import pool_has, quote_name

    pool = _load_pool(args)
    if args.task not in pool.tasks:
        raise ContinualError(
            f"task {quote_name(args.task)} is not in the pool; {pool_has(pool.tasks)}"
        )
    kind = pool.entries[pool.tasks.index(args.task)].kind
    result = pool.evaluate(args.task, read_examples(args.test, kind)[1], oracle=args.oracle)
    if args.json:
        print(_json(result.to_dict()))
    else:
        unit = "%" if result.metric == "accuracy" else ""
        line = f"{result.task}: {result.metric} {result.accuracy:.2f}{unit} on {result.examples}"
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
        tasks.append(
            {
                "name": record.get("name"),
                "labels": record.get("labels"),
                "generation": record.get("generation"),
                "bytes": path.lstat().st_size if path.is_file() and not path.is_symlink() else None,
                "stats": record.get("stats", {}),
            }
        )
    summary = {
        "pool": str(args.pool),
        "backbone": manifest["backbone"].get("name"),
        "hidden_size": hidden,
        "prompt_length": length,
        "placement": manifest.get("placement", "input"),
        "selector": manifest["selector"],
        "tasks": tasks,
    }
    if args.json:
        print(_json(summary, indent=2))
        return 0
    # Names come from the manifest: escaped, so a name cannot drive the terminal.
    selector = manifest["selector"].get("name")
    print(
        f"{_printable(str(args.pool))}: {len(tasks)} task(s) on "
        f"{_printable(str(summary['backbone']))} (width {hidden}, prompt length {length}, "
        f"selector {_printable(str(selector))})"
    )
    for task in tasks:
        size = "?" if task["bytes"] is None else f"{task['bytes'] / 1000:.1f} KB"
        if task["generation"] is not None:
            metric = _printable(str(task["generation"].get("metric")))
            answers = f"text-to-text ({metric})"
        else:
            labels = "[" + ", ".join(_printable(repr(label)) for label in task["labels"]) + "]"
            answers = f"{len(task['labels'])} labels {labels}"
        print(f"  {_printable(str(task['name']))}: {answers}, {size}")
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
        print(f"  {_printable(name):>16}: " + " ".join(f"{value:5.2f}" for value in row))
    if args.tokens and pool.placement.deep:
        print("nearest tokens: not for deep prompts (their vectors are middle-layer states)")
    elif args.tokens:
        for name in pool.tasks:
            print(f"nearest tokens of {_printable(name)}'s prompt vectors:")
            for position, tokens in enumerate(nearest_tokens(pool, name, args.tokens)):
                print(
                    f"  {position:>3}: "
                    + ", ".join(f"{_printable(t)} ({s:.2f})" for t, s in tokens)
                )
    for item in explain_routing(pool, args.texts):
        print(_json(item, ensure_ascii=False))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .bench.cli import run_from_args

    return run_from_args(args)


def _plot(args: argparse.Namespace) -> int:
    from .bench.cli import plot_from_args

    return plot_from_args(args)


# -- serving and task management ----------------------------------------------------------------
def _add_manage_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve", help="serve a pool over HTTP (POST /predict, GET /tasks)", parents=[common]
    )
    serve.add_argument("pool", type=_path)
    serve.add_argument(
        "--backbone",
        help="the model the pool was built on, where it is not the packaged default or a hub name",
    )
    add_device_options(serve, dtype_default=None)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="texts per shared forward pass at most (1: no micro-batching)",
    )
    serve.add_argument(
        "--max-batch-tokens",
        type=int,
        default=256,
        help="tokens per shared forward pass at most: a large request is split into batches "
        "this size, taken in turn with other requests' texts",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its forward pass",
    )
    serve.add_argument("--max-texts", type=int, default=256, help="texts per request at most")
    serve.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="seconds between checks of the pool on disk for added/removed tasks",
    )
    serve.add_argument(
        "--threads", type=int, help="torch threads for the forward passes (default: torch's choice)"
    )
    serve.add_argument(
        "--docs",
        action="store_true",
        help="serve /docs and /redoc (scripts from the installed package, no CDN)",
    )
    serve.set_defaults(handler=_serve)

    remove = commands.add_parser("remove", help="remove one task from a pool", parents=[common])
    remove.add_argument("pool", type=_path)
    remove.add_argument("--task", required=True)
    _add_wait_argument(remove)
    remove.set_defaults(handler=_remove)

    export = commands.add_parser(
        "export", help="write one task as a single safetensors file", parents=[common]
    )
    export.add_argument("pool", type=_path)
    export.add_argument("--task", required=True)
    export.add_argument(
        "--out",
        required=True,
        type=_path,
        help="a new file outside any pool folder, in a folder that exists",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it is an existing regular file (atomically; never a link, "
        "device or FIFO)",
    )
    export.set_defaults(handler=_export)

    imp = commands.add_parser(
        "import", help="add an exported task to a pool (created if missing)", parents=[common]
    )
    imp.add_argument("pool", type=_path)
    imp.add_argument("file", type=_path)
    imp.add_argument("--as", dest="name", help="import under this name")
    _add_wait_argument(imp)
    imp.set_defaults(handler=_import)


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
    print(_json({"pool": str(args.pool), "removed": record["name"]}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .manage import export_task

    path = export_task(args.pool, args.task, args.out, force=args.force)
    print(
        _json(
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
    print(_json({"pool": str(args.pool), "task": entry.name, "labels": entry.labels}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
