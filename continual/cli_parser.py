"""The ``continual`` command line's parser: every subcommand, argument and help text.

`continual.cli` runs what it parses; the documentation's command-line reference is generated
from `build_parser` (``docs/hooks.py``). Options that ``continual run`` shares are declared in
`continual.options`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from .metrics import TASK_METRICS
from .options import add_device_options, add_placement_option, add_run_options
from .selector import DEFAULT_SELECTOR, SELECTORS
from .terminal import one_line

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {one_line(message)} (see '{self.prog} --help')\n")


def _add_wait_argument(parser: argparse.ArgumentParser) -> None:
    """``--wait``, for the commands that change a pool (checked by `continual.cli`)."""
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="seconds to wait for another process that holds the pool",
    )


def _add_debug_option(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="print the traceback of an unexpected failure",
    )


def _path(value: str) -> Path:
    if not value:
        raise argparse.ArgumentTypeError("empty path; give a file or folder name")
    return Path(value)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``continual`` and its subcommands (``args.command`` names the one given)."""
    parser = _Parser(
        prog="continual",
        description="Continual learning with a growing pool of soft prompts over a frozen model.",
    )
    _add_debug_option(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True)
    # --debug after the subcommand too; not given there, it leaves the top level's value.
    common = _Parser(add_help=False)
    _add_debug_option(common, default=argparse.SUPPRESS)
    pooled = _Parser(add_help=False, parents=[common])  # the subcommands that take a pool
    pooled.add_argument("pool", type=_path)
    backbone_help = (
        "the backbone to load the pool with (a model folder or hub name); needed "
        "when the pool names a local model, and checked against the pool's"
    )

    learn = commands.add_parser(
        "learn", help="add one task to a pool (created if missing)", parents=[pooled]
    )
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

    predict = commands.add_parser(
        "predict",
        help="label texts or write answers; one JSON object per line "
        "(text, task, label, output, score)",
        parents=[pooled],
    )
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

    evaluate = commands.add_parser(
        "evaluate", help="accuracy and routing accuracy on a file", parents=[pooled]
    )
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--test", required=True, type=_path)
    evaluate.add_argument("--backbone", help=backbone_help)
    evaluate.add_argument("--oracle", action="store_true", help="give the task id (no routing)")
    evaluate.add_argument("--json", action="store_true")
    add_device_options(evaluate, dtype_default=None)

    info = commands.add_parser("info", help="tasks, labels and sizes of a pool", parents=[pooled])
    info.add_argument("--json", action="store_true")

    explain = commands.add_parser(
        "explain",
        help="why texts went where they went, and what the prompts resemble",
        parents=[pooled],
    )
    explain.add_argument("texts", nargs="*")
    explain.add_argument(
        "--tokens",
        type=int,
        default=0,
        help="also show the N vocabulary tokens nearest each prompt vector",
    )
    explain.add_argument("--backbone", help=backbone_help)
    add_device_options(explain, dtype_default=None)

    from .bench.cli import add_run_arguments

    run = commands.add_parser(
        "run", help="run a benchmark: methods over a task sequence", parents=[common]
    )
    add_run_arguments(run)

    plot = commands.add_parser(
        "plot", help="draw the plots of a benchmark result folder", parents=[common]
    )
    plot.add_argument("dir", type=_path)
    _add_manage_parsers(commands, pooled)
    return parser


def _add_manage_parsers(commands: Any, pooled: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve", help="serve a pool over HTTP (POST /predict, GET /tasks)", parents=[pooled]
    )
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

    remove = commands.add_parser("remove", help="remove one task from a pool", parents=[pooled])
    remove.add_argument("--task", required=True)
    _add_wait_argument(remove)

    export = commands.add_parser(
        "export", help="write one task as a single safetensors file", parents=[pooled]
    )
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

    imp = commands.add_parser(
        "import", help="add an exported task to a pool (created if missing)", parents=[pooled]
    )
    imp.add_argument("file", type=_path)
    imp.add_argument("--as", dest="name", help="import under this name")
    _add_wait_argument(imp)
