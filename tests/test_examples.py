"""Every script in ``examples/`` and every code block the docs mark as runnable runs, and prints
what the docs say it prints.

In the Markdown of ``README.md`` and ``docs/``:

- ``<!-- runnable -->`` before a fenced Python block: the page's marked blocks run in order as
  one script, from a folder where ``examples/`` is the repository's.
- ``<!-- output -->`` before a fenced block: what the page's runnable blocks print, exactly.
- ``<!-- output: examples/NAME.py -->`` before a fenced block: what that script prints.

Each run loads the packaged MiniLM, so these tests are ``slow``.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCK = re.compile(r"<!-- (runnable|output(?:: (\S+))?) -->\n```[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[tuple[str, str | None, str]]:
    """(kind, script or None, code) of each marked block of a page."""
    text = page.read_text(encoding="utf-8")
    return [(m.group(1).split(":")[0], m.group(2), m.group(3)) for m in BLOCK.finditer(text)]


RUNNABLE_PAGES = [page for page in PAGES if any(b[0] == "runnable" for b in _blocks(page))]
OUTPUT_CHECKS = [
    (page, script, expected)
    for page in PAGES
    for kind, script, expected in _blocks(page)
    if kind == "output" and script
]


def _run(args: list[str], folder: Path) -> str:
    """Run ``python ARGS`` in ``folder`` (holding a link to ``examples/``); its stdout."""
    link = folder / "examples"
    if not link.exists():
        link.symlink_to(REPO / "examples")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


@functools.cache
def _example_output(name: str, folder: Path) -> str:
    return _run([str(REPO / name)], folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("examples")


def test_the_docs_mark_blocks_to_run():
    assert EXAMPLES, "no example scripts found"
    assert REPO / "README.md" in RUNNABLE_PAGES
    assert OUTPUT_CHECKS


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script, folder):
    assert _example_output(str(script.relative_to(REPO)), folder).strip()


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda path: str(path.relative_to(REPO)))
def test_runnable_blocks_run_and_print_what_the_page_says(page, tmp_path):
    blocks = _blocks(page)
    code = "\n".join(code for kind, _, code in blocks if kind == "runnable")
    script = tmp_path / "page.py"
    script.write_text(code, encoding="utf-8")
    printed = _run([str(script)], tmp_path)
    for kind, name, expected in blocks:
        if kind == "output" and name is None:
            assert printed == expected, (
                f"{page.name} says it prints:\n{expected}\nit printed:\n{printed}"
            )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "name", "expected"),
    OUTPUT_CHECKS,
    ids=[f"{page.relative_to(REPO)}:{name}" for page, name, _ in OUTPUT_CHECKS],
)
def test_pages_show_what_the_examples_print(page, name, expected, folder):
    assert _example_output(name, folder) == expected
