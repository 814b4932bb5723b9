"""Command-line options that ``continual``'s commands and ``continual run`` share, declared
once (`continual.cli`, `continual.bench.cli`)."""

from __future__ import annotations

import argparse

from .families import DTYPES
from .placement import PLACEMENTS


def add_device_options(parser: argparse.ArgumentParser, *, dtype_default: str | None) -> None:
    """``--device`` and ``--dtype``; a ``dtype_default`` of None leaves the choice to the pool
    (float32 for a new one, else the pool's own)."""
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:1... or auto (the GPU if there is one)"
    )
    default = (
        f"default {dtype_default}"
        if dtype_default
        else "default float32 for a new pool, else the pool's own"
    )
    parser.add_argument(
        "--dtype",
        default=dtype_default,
        choices=list(DTYPES),
        help=f"precision of the frozen backbone (prompts and heads stay float32); {default}",
    )


def add_placement_option(
    parser: argparse.ArgumentParser, *, default: str | None, what: str
) -> None:
    """``--placement`` of ``what`` (a new pool, the benchmark's pools)."""
    parser.add_argument(
        "--placement",
        choices=list(PLACEMENTS),
        default=default,
        help=f"for {what}: prompts before the input (default), or deep prompts from the query "
        "layer on, routed in the same pass (cheaper to serve; see docs/how-to/placement.md)",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--seed`` and ``--no-progress``, for commands that train."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
