"""The documentation against the code: the CLI page, the HTTP schema, the file format page and
every docstring example.

Set ``UPDATE_DOCS=1`` to rewrite ``docs/reference/openapi.json`` from the app instead of
comparing.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import io
import json
import os
import re
from pathlib import Path

import pytest
from conftest import ANIMALS, COLOURS, synthetic_pairs

import continual
from continual import PromptPool, Task, TrainingConfig
from continual.cli import main
from continual.exported import read_export_file

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


# -- the command line ------------------------------------------------------------------------------
def _help(*command: str) -> str:
    """What ``continual COMMAND --help`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _help_arguments(text: str) -> set[str]:
    """Options and positional argument names that a ``--help`` text lists."""
    names: set[str] = set()
    section = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            section = line
            continue
        stripped = line.strip()
        if not stripped or not line.startswith("  ") or line.startswith("   "):
            continue  # blank, a subcommand's line, or the wrapped tail of a help text
        head = stripped.split("  ")[0]
        if section == "options:":
            names |= set(OPTION.findall(head))
        elif section == "positional arguments:" and not head.startswith("{"):
            names.add(head.split()[0])
    return names


def _page_sections() -> dict[str, str]:
    """The generated CLI page, split into one text per ``## `continual ...` `` heading."""
    sections = re.split(r"^## `(continual[^`]*)`$", hooks.cli_reference(), flags=re.M)
    return dict(zip(sections[1::2], sections[2::2]))


def _page_arguments(section: str) -> set[str]:
    names: set[str] = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            first = row.split("|")[1]
            options = OPTION.findall(first)
            names |= set(options) if options else {first.strip().split("`")[1]}
    return names


def test_cli_page_is_generated_from_the_parser():
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert "<!-- cli-reference -->" in page


def test_cli_page_lists_every_subcommand_and_option_that_help_prints():
    top = _help()
    listed = re.search(r"\{([\w,]+)\}", top)
    assert listed, top
    commands = listed.group(1).split(",")
    sections = _page_sections()
    assert sorted(sections) == sorted(["continual"] + [f"continual {c}" for c in commands])
    assert _page_arguments(sections["continual"]) == _help_arguments(top)
    for command in commands:
        expected = _help_arguments(_help(command))
        assert expected, command
        assert _page_arguments(sections[f"continual {command}"]) == expected, command


def test_help_parsing_sees_a_difference():
    """The comparison above can fail: a page section missing an option differs from --help."""
    section = _page_sections()["continual learn"]
    without = "\n".join(line for line in section.splitlines() if "`--epochs`" not in line)
    assert _page_arguments(without) != _help_arguments(_help("learn"))


# -- the HTTP API ----------------------------------------------------------------------------------
def test_http_page_schema_is_the_apps(tmp_path, tiny_backbone):
    from continual.serve import create_app

    pool = PromptPool(
        tiny_backbone, prompt_length=4, selector="prototypes", training=TrainingConfig(epochs=1)
    )
    pool.learn(Task.from_pairs("colours", synthetic_pairs(COLOURS, 10, seed=1)), progress=False)
    path = pool.save(tmp_path / "pool")
    schema = create_app(path, backbone=tiny_backbone).openapi()
    committed = DOCS / "reference" / "openapi.json"
    if os.environ.get("UPDATE_DOCS"):
        committed.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    assert json.loads(committed.read_text(encoding="utf-8")) == schema, (
        "docs/reference/openapi.json is out of date: rerun this test with UPDATE_DOCS=1"
    )
    page = hooks.http_reference(schema)
    for path_name, methods in schema["paths"].items():
        for method in methods:
            assert f"`{method.upper()} {path_name}`" in page


# -- the file format -------------------------------------------------------------------------------
def _keys(value: object, prefix: str = "") -> set[str]:
    """Every key of nested JSON objects, as dotted paths (list items share their list's path)."""
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(prefix + key)
            keys |= _keys(item, f"{prefix}{key}.")
    elif isinstance(value, list):
        for item in value:
            keys |= _keys(item, prefix)
    return keys


@pytest.mark.parametrize("selector", ["gaussian_views", "gaussian", "prototypes", "keys"])
def test_format_page_names_every_manifest_field_and_tensor(tmp_path, tiny_backbone, selector):
    page = (DOCS / "reference" / "format.md").read_text(encoding="utf-8")
    pool = PromptPool(
        tiny_backbone, prompt_length=4, selector=selector, training=TrainingConfig(epochs=1)
    )
    pool.learn(Task.from_pairs("colours", synthetic_pairs(COLOURS, 10, seed=1)), progress=False)
    pool.learn(Task.from_pairs("animals", synthetic_pairs(ANIMALS, 10, seed=2)), progress=False)
    path = pool.save(tmp_path / "pool")
    manifest = json.loads((path / "manifest.json").read_text())
    fields = _keys(manifest)
    tensors = set(pool.entries[0].tensors())
    _, info = read_export_file(pool.export_task("colours", tmp_path / "colours.safetensors"))
    metadata = {"format", "format_version", "name", "labels", "stats", "selector"} | set(info)
    # Manifest fields by their own name (the page's tables are per object); tensors and
    # export metadata keys whole.
    names = {key.split(".")[-1] for key in fields} | tensors | metadata
    missing = sorted(name for name in names if f"`{name}`" not in page)
    assert not missing, f"docs/reference/format.md does not describe {missing}"


# -- docstring examples ----------------------------------------------------------------------------
def _modules_with_examples() -> list[str]:
    """Modules of the package whose source holds a ``>>>`` example (found without importing)."""
    package = Path(continual.__file__).parent
    return [
        ".".join(("continual", *path.relative_to(package).with_suffix("").parts))
        for path in sorted(package.rglob("*.py"))
        if ">>>" in path.read_text(encoding="utf-8")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(REPO)  # examples read the shipped example data by its relative path
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [test for test in finder.find(module) if test.examples]
    assert tests
    out = io.StringIO()
    for test in tests:
        runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()


# -- the README ------------------------------------------------------------------------------------
def test_readme_is_a_landing_page_whose_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
