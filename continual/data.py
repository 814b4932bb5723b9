"""Tasks: named, labelled text data with train/validation/test splits, and the file loaders.

Files are CSV (header row), JSONL (one object per line) or plain text, with a ``text`` column
and, for labelled data, a ``label`` column. Labels are kept as the strings written in the file
(in JSONL a label must be a JSON string: ``1`` and ``"1"`` are not silently merged). Every file
is read through `files.read_regular_file`: regular files only, up to
``files.MAX_DATA_FILE_BYTES``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .errors import TaskDataError

Example = tuple[str, str]  # (text, label)

# Line breaks of JSONL and plain text files. Not str.splitlines: it also breaks at U+2028,
# U+0085 and form feeds, which json.dumps(..., ensure_ascii=False) leaves inside strings.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# csv's default field limit (128 KiB) is smaller than some real documents.
_CSV_FIELD_LIMIT = 1 << 30


@dataclass
class Task:
    """One task of a sequence: a name, its label names and its splits.

    ``labels`` fixes the order of the head's outputs; every example's label is one of them.
    """

    name: str
    train: list[Example]
    test: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskDataError("task name must be a non-empty string")
        if not self.labels:
            self.labels = sorted({label for _, label in self.train})
        known = set(self.labels)
        if len(known) < 2:
            raise TaskDataError(
                f"task {self.name!r}: needs at least 2 distinct labels in its training data, "
                f"found {sorted(known)}"
            )
        for split in ("train", "validation", "test"):
            for row, (text, label) in enumerate(getattr(self, split)):
                if not isinstance(text, str) or not text.strip():
                    raise TaskDataError(f"task {self.name!r}, {split} example {row}: empty text")
                if label not in known:
                    raise TaskDataError(
                        f"task {self.name!r}, {split} example {row}: label {label!r} is not one of "
                        f"the task's labels {self.labels}"
                    )

    @classmethod
    def from_pairs(
        cls,
        name: str,
        pairs: Iterable[tuple[str, object]],
        *,
        test_fraction: float = 0.2,
        validation_fraction: float = 0.1,
        seed: int = 0,
    ) -> Task:
        """Build a task from in-memory ``(text, label)`` pairs with a seeded, stratified split."""
        examples = [(text, str(label)) for text, label in pairs]
        train, validation, test = split_examples(examples, test_fraction, validation_fraction, seed)
        return cls(name=name, train=train, validation=validation, test=test)

    @classmethod
    def from_files(
        cls,
        name: str,
        train: str | Path,
        test: str | Path | None = None,
        validation: str | Path | None = None,
        *,
        seed: int = 0,
    ) -> Task:
        """Load a task from files. Without ``test``, a seeded 20% test split is held out.

        Without ``validation``, 10% of the training examples are held out for early stopping.
        """
        if not isinstance(name, str) or not name.strip():
            # Checked before the files are read, so the error does not blame them.
            raise TaskDataError(f"task name must be a non-empty string, got {name!r}")
        train_rows = read_labelled(train)
        test_rows = read_labelled(test) if test is not None else None
        valid_rows = read_labelled(validation) if validation is not None else None
        if test_rows is None:
            train_rows, _, test_rows = split_examples(train_rows, 0.2, 0.0, seed)
        if valid_rows is None:
            train_rows, valid_rows, _ = split_examples(train_rows, 0.0, 0.1, seed)
        try:
            return cls(name=name, train=train_rows, validation=valid_rows, test=test_rows)
        except TaskDataError as error:
            files = ", ".join(str(p) for p in (train, test, validation) if p is not None)
            raise TaskDataError(f"{files}: {error}") from None

    def label_index(self, label: str) -> int:
        return self.labels.index(label)


def split_examples(
    examples: Sequence[Example], test_fraction: float, validation_fraction: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Stratified seeded split into (train, validation, test); every label keeps a train example."""
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example[1], []).append(example)
    rng = random.Random(seed)
    train: list[Example] = []
    validation: list[Example] = []
    test: list[Example] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        n_valid = round(len(group) * validation_fraction)
        n_test = min(n_test, max(len(group) - 1, 0))
        n_valid = min(n_valid, max(len(group) - 1 - n_test, 0))
        test += group[:n_test]
        validation += group[n_test : n_test + n_valid]
        train += group[n_test + n_valid :]
    rng.shuffle(train)
    rng.shuffle(validation)
    rng.shuffle(test)
    return train, validation, test


def _decode(path: Path) -> str:
    raw = files.read_regular_file(
        path, limit=files.MAX_DATA_FILE_BYTES, error=TaskDataError, what="CSV, JSONL or text file"
    )
    try:
        # utf-8-sig drops a byte-order mark that spreadsheet programs write.
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TaskDataError(
            f"{path}: not valid UTF-8 at byte {error.start}; re-save the file as UTF-8"
        ) from None
    if "\x00" in content:
        # Valid UTF-8, but no text file holds NUL: typically UTF-16 without a byte-order mark.
        raise TaskDataError(
            f"{path}: contains NUL bytes (at byte {raw.index(0)}); not a UTF-8 text file "
            "(UTF-16?); re-save the file as UTF-8"
        )
    return content


def read_rows(path: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Read the given columns from a CSV or JSONL file, checking every row.

    Returns one dict per row; raises `TaskDataError` naming the file, row and field at fault.
    Row numbers are 1-based data rows (the CSV header is not counted).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .csv or .jsonl")
    content = _decode(path)
    if suffix == ".csv":
        records = _csv_records(path, content)
    else:
        records = _jsonl_records(path, content)
    rows: list[dict[str, str]] = []
    for number, record in records:
        row: dict[str, str] = {}
        for column in columns:
            if column not in record or record[column] is None:
                raise TaskDataError(f"{path}, row {number}: missing field {column!r}")
            value = record[column]
            if column == "label" and suffix != ".csv" and not isinstance(value, str):
                # A number would be read as some string other than the one written (1e2 as
                # "100.0"), and 1 and "1" would become one label: labels must be written as text.
                hint = (
                    "; put the label in quotes, as written, if that is the label"
                    if isinstance(value, (int, float)) and not isinstance(value, bool)
                    else ""
                )
                raise TaskDataError(
                    f"{path}, row {number}, field 'label': a label must be a JSON string, got "
                    f"{type(value).__name__} {json.dumps(value)[:40]}{hint}"
                )
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise TaskDataError(
                    f"{path}, row {number}, field {column!r}: expected text or a number, "
                    f"got {type(value).__name__}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise TaskDataError(
                    f"{path}, row {number}, field {column!r}: expected text or a finite number, "
                    f"got {value}"
                )
            value = str(value) if not isinstance(value, str) else value
            if column == "text" and not value.strip():
                raise TaskDataError(f"{path}, row {number}, field 'text': empty text")
            if column == "label" and not value.strip():
                raise TaskDataError(f"{path}, row {number}, field 'label': empty label")
            row[column] = value
        rows.append(row)
    if not rows:
        raise TaskDataError(f"{path}: no data rows")
    return rows


def _csv_records(path: Path, content: str) -> list[tuple[int, dict]]:
    # The field limit is process-wide: raise it for this read only, then put it back.
    previous = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        return _csv_rows(path, content)
    finally:
        csv.field_size_limit(previous)


def _csv_rows(path: Path, content: str) -> list[tuple[int, dict]]:
    try:
        reader = csv.DictReader(io.StringIO(content, newline=""))
        header = reader.fieldnames
        if not header:
            raise TaskDataError(
                f"{path}: empty file, expected a header row with 'text' and 'label'"
            )
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise TaskDataError(
                f"{path}: duplicated column name(s) {duplicated} in the header row; each column "
                "needs its own name"
            )
        records = []
        for number, record in enumerate(reader, start=1):
            if None in record:
                raise TaskDataError(
                    f"{path}, row {number}: more fields than the header's {len(header)}"
                )
            records.append((number, record))
        return records
    except csv.Error as error:
        raise TaskDataError(f"{path}: malformed CSV ({error})") from None


def _jsonl_records(path: Path, content: str) -> list[tuple[int, dict]]:
    records = []
    number = 0
    for line in _LINE_BREAK.split(content):
        if not line.strip():
            continue
        number += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskDataError(f"{path}, row {number}: invalid JSON ({error.msg})") from None
        except (ValueError, RecursionError) as error:
            # Numbers too long to convert, or arrays/objects nested too deep to parse.
            raise TaskDataError(f"{path}, row {number}: invalid JSON ({error})") from None
        if not isinstance(record, dict):
            raise TaskDataError(f"{path}, row {number}: expected a JSON object per line")
        records.append((number, record))
    return records


def read_labelled(path: str | Path) -> list[Example]:
    """Read ``(text, label)`` pairs from a CSV or JSONL file with ``text`` and ``label`` columns."""
    return [(row["text"], row["label"]) for row in read_rows(path, ("text", "label"))]


def read_texts(path: str | Path) -> list[str]:
    """Read unlabelled inputs: CSV/JSONL with a ``text`` column, or plain text, one per line."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".jsonl", ".json"):
        return [row["text"] for row in read_rows(path, ("text",))]
    texts = [line for line in _LINE_BREAK.split(_decode(path)) if line.strip()]
    if not texts:
        raise TaskDataError(f"{path}: no non-empty lines")
    return texts
