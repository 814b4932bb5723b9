"""The ``continual run`` and ``continual plot`` commands."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..extras import require
from ..options import add_device_options, add_placement_option, add_run_options
from .config import QUICK_METHODS, BenchmarkConfig, quick
from .methods import METHODS


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sequence",
        default="text4",
        help="text4, long12, gen3 (text-to-text on a language model), or a TOML file of tasks",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help=f"any of: {' '.join(METHODS)} (default: all; with --quick, {' '.join(QUICK_METHODS)})",
    )
    parser.add_argument("--out", type=Path, help="result folder (default results/<sequence>)")
    parser.add_argument("--orders", type=int, help="task orders to average over (default 1)")
    parser.add_argument("--train-per-label", type=int, help="(gen3: examples per task)")
    parser.add_argument("--test-per-label", type=int, help="(gen3: examples per task)")
    parser.add_argument("--epochs", type=int, help="prompt-tuning epochs at most")
    parser.add_argument("--finetune-epochs", type=int, help="full fine-tuning epochs")
    parser.add_argument(
        "--backbone",
        help="HF model name, folder or .gguf file (default: the packaged all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--query-layer",
        type=int,
        help="layer the selectors route on (default: 3 for the packaged "
        "MiniLM, the middle layer of another --backbone)",
    )
    parser.add_argument("--max-length", type=int, help="tokens per input (default 64)")
    add_placement_option(parser, default=None, what="the benchmark's pools")
    add_device_options(parser, dtype_default="float32")
    parser.add_argument(
        "--quick", action="store_true", help="small data, one order: a few minutes on a laptop CPU"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out with the same options",
    )
    add_run_options(parser)


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    from ..errors import ContinualError
    from ..trainer import check_seed

    check_seed(args.seed, "--seed")
    for key in ("orders", "train_per_label", "test_per_label", "epochs", "finetune_epochs"):
        value = getattr(args, key)
        if value is not None and value < 1:
            option = "--" + key.replace("_", "-")
            raise ContinualError(f"{option} must be at least 1, got {value}")
    config = BenchmarkConfig(
        sequence=args.sequence,
        seed=args.seed,
        methods=tuple(name for name, spec in METHODS.items() if not spec.language_model_only),
        device=args.device,
        dtype=args.dtype,
    )
    if args.backbone:
        # MiniLM's query layer 3 means nothing for another model: its middle layer instead.
        config = replace(config, backbone=args.backbone, query_layer=None)
    if args.quick:
        config = quick(config)
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    for key in (
        "orders",
        "train_per_label",
        "test_per_label",
        "epochs",
        "finetune_epochs",
        "query_layer",
        "max_length",
        "placement",
    ):
        value = getattr(args, key)
        if value is not None:
            config = replace(config, **{key: value})
    return config


def run_from_args(args: argparse.Namespace) -> int:
    require("bench", "continual run")
    from .generative_corpora import GENERATIVE_SEQUENCES
    from .report import render_report
    from .runner import run_benchmark

    if args.sequence in GENERATIVE_SEQUENCES:
        return _run_generative(args)
    config = config_from_args(args)
    stem = Path(config.sequence).stem if config.sequence.endswith(".toml") else config.sequence
    out = args.out or Path("results") / (stem + ("-quick" if args.quick else ""))
    summary = run_benchmark(
        config, out, resume=args.resume, progress=not args.no_progress, command=_command()
    )
    print(render_report(summary))
    print(f"results in {out}/ (results.json, report.md, *.png)", file=sys.stderr)
    return 0


def _run_generative(args: argparse.Namespace) -> int:
    from .generative_report import render_generative_report
    from .generative_runner import generative_config_from_args, run_generative

    config = generative_config_from_args(args)
    out = args.out or Path("results") / (config.sequence + ("-quick" if args.quick else ""))
    summary = run_generative(
        config, out, resume=args.resume, progress=not args.no_progress, command=_command()
    )
    print(render_generative_report(summary))
    print(f"results in {out}/ (results.json, report.md, runs/, *.png)", file=sys.stderr)
    return 0


def _command() -> str:
    return ("continual " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()


def plot_from_args(args: argparse.Namespace) -> int:
    require("bench", "continual plot")
    from .report import draw_plots

    if (Path(args.dir) / "runs").is_dir():  # a generative run: its report is rebuilt too
        from .generative_runner import rebuild_summary

        rebuild_summary(Path(args.dir))
        print(Path(args.dir) / "report.md")
    for path in draw_plots(args.dir):
        print(path)
    return 0
