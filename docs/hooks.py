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
REPORT = re.compile(r"<!-- report: (results/[\w./-]+) -->")


# -- the command line ------------------------------------------------------------------------------
def cli_reference() -> str:
    """Markdown for every ``continual`` subcommand: usage, arguments, options, defaults."""
    from continual.cli_parser import build_parser

    parser = build_parser()
    parts = [_parser_section(parser, "continual", parser.description or "")]
    for name, (sub, summary) in subcommands(parser).items():
        parts.append(_parser_section(sub, f"continual {name}", summary))
    return "\n\n".join(parts) + "\n"


def subcommands(
    parser: argparse.ArgumentParser,
) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """The parser's subcommands, name → (parser, one-line help), in the order ``--help`` lists
    them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {
                choice.dest: choice.help or ""
                for choice in action._choices_actions
            }
            return {
                name: (sub, helps.get(name, ""))
                for name, sub in action.choices.items()
            }
    return {}


def _parser_section(
    parser: argparse.ArgumentParser, title: str, summary: str
) -> str:
    lines = [f"## `{title}`", ""]
    if summary:
        lines += [summary, ""]
    lines += [
        "```text",
        parser.format_usage().removeprefix("usage: ").rstrip(),
        "```",
        "",
    ]
    rows = [
        action
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and action.help != argparse.SUPPRESS
    ]
    if rows:
        lines += ["| argument | what | default |", "|---|---|---|"]
        lines += [_argument_row(action) for action in rows]
    return "\n".join(lines)


def _argument_row(action: argparse.Action) -> str:
    if action.option_strings:
        name = ", ".join(f"`{option}`" for option in action.option_strings)
        if action.nargs != 0:
            name += f" `{_metavar(action)}`"
    else:
        name = f"`{action.metavar or action.dest}`" + (
            " ..." if action.nargs == "*" else ""
        )
    what = (action.help or "").replace("%%", "%")
    if action.choices and not isinstance(action.choices, dict):
        what += f" (one of: {', '.join(f'`{choice}`' for choice in action.choices)})"
    if action.required:
        what += " **required**"
    default = action.default
    # By identity: a default of 0 is shown; None, False and "not set" are not.
    hidden = any(
        default is nothing for nothing in (None, False, argparse.SUPPRESS)
    )
    shown = "" if hidden or action.nargs == 0 else f"`{default}`"
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
                body_schema = json.dumps(content.get("schema", {}), indent=2)
                lines += [
                    f"Request body ({media}):",
                    "",
                    "```json",
                    body_schema,
                    "```",
                    "",
                ]
            for status, response in operation.get("responses", {}).items():
                lines.append(
                    f"- **{status}** {response.get('description', '')}"
                )
            lines.append("")
    components = schema.get("components", {}).get("schemas", {})
    if components:
        lines += ["### Schemas", ""]
        for name, component in components.items():
            lines += [
                f"#### `{name}`",
                "",
                "```json",
                json.dumps(component, indent=2),
                "```",
                "",
            ]
    return "\n".join(lines)


# -- benchmark reports -----------------------------------------------------------------------------
def report(folder: str, up: str = "") -> str:
    """A study's ``report.md`` with its headings one level down, then its plots.

    ``up`` leads from the page that shows it to the site's root (``"../"`` per level).
    """
    path = ROOT / folder
    text = (path / "report.md").read_text(encoding="utf-8")
    lines = [
        ("#" + line) if line.startswith("#") else line
        for line in text.splitlines()
    ]
    # The forgetting plot first: it is what a reader of a benchmark page looks for.
    for plot in sorted(
        path.glob("*.png"),
        key=lambda plot: (plot.stem != "forgetting", plot.name),
    ):
        lines += [
            "",
            f"![{plot.stem.replace('_', ' ')}]({up}{folder}/{plot.name})",
        ]
    return "\n".join(lines) + "\n"


# -- MkDocs events ---------------------------------------------------------------------------------
RESULT_FILES = (".png", ".json", ".log")


def on_files(files, config):
    """Copy the plots and raw results under ``results/`` into the site at the same paths."""
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "results").rglob("*")):
        if (
            path.suffix not in RESULT_FILES
            or "cache" in path.parts
            or not path.is_file()
        ):
            continue
        relative = path.relative_to(ROOT).as_posix()
        files.append(
            File(
                relative,
                str(ROOT),
                config["site_dir"],
                config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- http-reference -->" in markdown:
        source = Path(page.file.abs_src_path).with_name("openapi.json")
        schema = json.loads(source.read_text(encoding="utf-8"))
        markdown = markdown.replace(
            "<!-- http-reference -->", http_reference(schema)
        )
    up = "../" * page.file.src_uri.count("/")
    return REPORT.sub(lambda match: report(match.group(1), up), markdown)


# Matrix indices such as R[T][j], in prose and in docstrings, read to Markdown as reference
# links; autorefs turns them into cross-references to "j". Put them back as text.
INDEX_AUTOREF = re.compile(
    r'<autoref [^>]*identifier="(\w)"[^>]*>([^<]*)</autoref>'
)


def on_page_content(html: str, page, config, files) -> str:
    return INDEX_AUTOREF.sub(r"[\2][\1]", html)
