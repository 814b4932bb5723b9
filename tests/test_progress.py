"""Progress output: a live bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import io
import subprocess
import sys

from continual.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_plain_line_per_checkpoint_and_no_redraws():
    log = io.StringIO()
    with Progress(30, "learn bbc", stream=log) as bar:
        for epoch in range(3):
            for _ in range(10):
                bar.update(1, loss="0.500")
            bar.checkpoint(f"epoch {epoch + 1}/3", val="90.0%")
    lines = log.getvalue().splitlines()
    assert len(lines) == 3
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("learn bbc epoch 3/3 30/30 steps loss=0.500 val=90.0%")


def test_a_terminal_gets_a_live_bar():
    terminal = Terminal()
    with Progress(5, "learn news", stream=terminal) as bar:
        for _ in range(5):
            bar.update(1)
        bar.checkpoint("epoch 1/1")
    assert "learn news" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_disabled_progress_writes_nothing():
    for stream in (io.StringIO(), Terminal()):
        with Progress(5, "quiet", stream=stream, enabled=False) as bar:
            bar.update(5)
            bar.checkpoint("done")
        assert stream.getvalue() == ""


def test_importing_the_library_loads_neither_avalanche_nor_matplotlib_and_changes_no_state():
    code = (
        "import csv, os, sys; before = (dict(os.environ), csv.field_size_limit());"
        "import continual;"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'avalanche', 'matplotlib'});"
        "assert not loaded, loaded;"
        "assert (dict(os.environ), csv.field_size_limit()) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
