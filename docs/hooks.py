"""MkDocs hooks: pages made at build time from the code and the results, so they cannot drift.

- ``<!-- cli-reference -->`` becomes the command line's reference, read from its argparse parser.
- ``<!-- http-reference -->`` becomes the HTTP API's reference, read from ``openapi.json`` next
  to the page (FastAPI's schema of `continual.serve.create_app`; a test keeps it current).
- ``<!-- report: results/NAME -->`` becomes that study's ``report.md`` (headings one level
  down) followed by its plots; the plots are copied into the site from ``results/``.

`tests/test_docs.py` imports this file to check the generated pages against the code.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = re.compile(r"<!-- report: (results/[\w.-]+) -->")


# -- the command line ------------------------------------------------------------------------------
def cli_reference() -> str:
    """Markdown for every ``continual`` subcommand: usage, arguments, options, defaults."""
    from continual.cli import _parser

    parser = _parser()
    parts = [_parser_section(parser, "continual", level=2)]
    for name, sub in subcommands(parser).items():
        parts.append(_parser_section(sub, f"continual {name}", level=2))
    return "\n\n".join(parts) + "\n"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands, name → parser, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parser_section(parser: argparse.ArgumentParser, title: str, level: int) -> str:
    lines = [f"{'#' * level} `{title}`", ""]
    summary = parser.description or _subcommand_help(title)
    if summary:
        lines += [summary, ""]
    usage = " ".join(parser.format_usage().split())
    lines += ["```text", usage.removeprefix("usage: "), "```", ""]
    rows = [
        action
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and action.help != argparse.SUPPRESS
    ]
    if rows:
        lines += ["| argument | what | default |", "|---|---|---|"]
        lines += [_argument_row(action) for action in rows]
    return "\n".join(lines)


_HELPS: dict[str, str] = {}


def _subcommand_help(title: str) -> str:
    if not _HELPS:
        from continual.cli import _parser

        for action in _parser()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    _HELPS[f"continual {choice.dest}"] = choice.help or ""
    return _HELPS.get(title, "")


def _argument_row(action: argparse.Action) -> str:
    if action.option_strings:
        name = ", ".join(f"`{option}`" for option in action.option_strings)
        if action.nargs != 0:
            name += f" `{_metavar(action)}`"
    else:
        name = f"`{action.metavar or action.dest}`" + (" ..." if action.nargs == "*" else "")
    what = (action.help or "").replace("%%", "%")
    if action.choices and not isinstance(action.choices, dict):
        what += f" (one of: {', '.join(f'`{choice}`' for choice in action.choices)})"
    if action.required:
        what += " **required**"
    default = action.default
    shown = (
        "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
    )
    return f"| {name} | {_cell(what)} | {shown} |"


def _metavar(action: argparse.Action) -> str:
    if action.metavar:
        return str(action.metavar)
    if action.choices:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    metavar = action.dest.upper()
    return f"{metavar} [{metavar} ...]" if action.nargs == "+" else metavar


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# -- the HTTP API ----------------------------------------------------------------------------------
def http_reference(schema: dict) -> str:
    """Markdown for each path and method of an OpenAPI schema."""
    lines: list[str] = [
        f"Generated from the OpenAPI {schema.get('openapi', '')} schema of "
        f"`{schema['info']['title']}` {schema['info']['version']}.",
        "",
    ]
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            lines += [f"### `{method.upper()} {path}`", ""]
            if operation.get("summary"):
                lines += [operation["summary"], ""]
            if operation.get("description"):
                lines += [operation["description"], ""]
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                lines += [f"Request body ({media}):", "", _schema_block(content, schema), ""]
            for status, response in operation.get("responses", {}).items():
                lines.append(f"- **{status}** {response.get('description', '')}")
            lines.append("")
    components = schema.get("components", {}).get("schemas", {})
    if components:
        lines += ["### Schemas", ""]
        for name, component in components.items():
            lines += [f"#### `{name}`", "", "```json", json.dumps(component, indent=2), "```", ""]
    return "\n".join(lines)


def _schema_block(content: dict, schema: dict) -> str:
    return "```json\n" + json.dumps(content.get("schema", {}), indent=2) + "\n```"


# -- benchmark reports -----------------------------------------------------------------------------
def report(folder: str) -> str:
    """A study's ``report.md`` with its headings one level down, then its plots."""
    path = ROOT / folder
    text = (path / "report.md").read_text(encoding="utf-8")
    lines = [("#" + line) if line.startswith("#") else line for line in text.splitlines()]
    for plot in sorted(path.glob("*.png")):
        lines += ["", f"![{plot.stem.replace('_', ' ')}](/{folder}/{plot.name})"]
    return "\n".join(lines) + "\n"


# -- MkDocs events ---------------------------------------------------------------------------------
RESULT_FILES = (".png", ".json", ".log")


def on_files(files, config):
    """Copy the plots and raw results under ``results/`` into the site at the same paths."""
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "results").rglob("*")):
        if path.suffix not in RESULT_FILES or "cache" in path.parts or not path.is_file():
            continue
        relative = path.relative_to(ROOT).as_posix()
        files.append(File(relative, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- http-reference -->" in markdown:
        source = Path(page.file.abs_src_path).with_name("openapi.json")
        schema = json.loads(source.read_text(encoding="utf-8"))
        markdown = markdown.replace("<!-- http-reference -->", http_reference(schema))
    return REPORT.sub(lambda match: _relative_images(report(match.group(1)), page), markdown)


# Matrix indices such as R[T][j], in prose and in docstrings, read to Markdown as reference
# links; autorefs turns them into cross-references to "j". Put them back as text.
INDEX_AUTOREF = re.compile(r'<autoref [^>]*identifier="(\w)"[^>]*>([^<]*)</autoref>')


def on_page_content(html: str, page, config, files) -> str:
    return INDEX_AUTOREF.sub(r"[\2][\1]", html)


def _relative_images(markdown: str, page) -> str:
    """Absolute ``/results/...`` image paths made relative to the page, as MkDocs checks them."""
    depth = page.file.src_uri.count("/")
    return markdown.replace("](/results/", "](" + "../" * depth + "results/")
