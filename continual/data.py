"""Tasks: named text data with train/validation/test splits, and the file loaders.

Two kinds of task: classification (``text`` → one of the task's ``label`` names) and
text-to-text (``text`` → a ``target`` text the language model generates, scored by the task's
metric). Files are CSV (header row), JSONL (one object per line) or plain text, with a ``text``
column and a ``label`` or ``target`` column. Labels and targets are kept as the strings written
in the file (in JSONL they must be JSON strings: ``1`` and ``"1"`` are not silently merged).
Every file is read through `files.read_regular_file`: regular files only, up to
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
from typing import Any, Literal

from . import files
from .errors import ContinualError, TaskDataError
from .metrics import check_task_metric

Example = tuple[str, str]  # (text, label), or (text, target) for a text-to-text task
TaskKind = Literal["classify", "generate"]
KINDS: tuple[str, ...] = ("classify", "generate")
# The column holding each kind's answer.
ANSWER_FIELD = {"classify": "label", "generate": "target"}

# Line breaks of JSONL and plain text files. Not str.splitlines: it also breaks at U+2028,
# U+0085 and form feeds, which json.dumps(..., ensure_ascii=False) leaves inside strings.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# csv's default field limit (128 KiB) is smaller than some real documents.
_CSV_FIELD_LIMIT = 1 << 30


@dataclass(frozen=True)
class Generation:
    """How a text-to-text task's answers are generated and scored.

    Attributes:
        metric: ``exact_match`` (the default), ``chrf`` or ``rouge_l`` (`continual.metrics`).
        max_new_tokens: tokens generated at most; None: set when the task is learned, from
            its longest training target (half as long again, at least 4 more tokens).
        stop: texts that end an answer (the answer is cut before the first one), besides the
            model's end-of-text token.
    """

    metric: str = "exact_match"
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_task_metric(self.metric)
        value = self.max_new_tokens
        if value is not None and (type(value) is not int or value < 1):
            raise ContinualError(f"max_new_tokens must be a positive integer, got {value!r}")
        if isinstance(self.stop, str) or not all(
            isinstance(text, str) and text for text in self.stop
        ):
            raise ContinualError(f"stop must be a list of non-empty texts, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
        }

    @classmethod
    def from_dict(cls, data: object) -> Generation:
        """The inverse of `to_dict`; a `ContinualError` names the bad field."""
        if not isinstance(data, dict):
            raise ContinualError("generation settings must be an object")
        unknown = sorted(set(data) - {"metric", "max_new_tokens", "stop"})
        if unknown:
            raise ContinualError(f"unknown generation setting(s) {unknown}")
        stop = data.get("stop", [])
        if not isinstance(stop, list):
            raise ContinualError(f"stop must be a list of non-empty texts, got {stop!r}")
        return cls(
            metric=data.get("metric", "exact_match"),
            max_new_tokens=data.get("max_new_tokens"),
            stop=tuple(stop),
        )


@dataclass
class Task:
    """One task of a sequence: a name, its splits, and its label names or generation settings.

    A classification task (``generation`` None): ``labels`` fixes the order of the head's
    outputs; every example's label is one of them. A text-to-text task (``generation`` set):
    each example is ``(text, target)``, the text the model should write.
    """

    name: str
    train: list[Example]
    test: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    generation: Generation | None = None

    @property
    def kind(self) -> TaskKind:
        """``classify`` or ``generate``."""
        return "classify" if self.generation is None else "generate"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskDataError("task name must be a non-empty string")
        if self.generation is not None:
            self._check_targets()
            return
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

    def _check_targets(self) -> None:
        if self.labels:
            raise TaskDataError(f"task {self.name!r}: a text-to-text task has no labels")
        if not self.train:
            raise TaskDataError(f"task {self.name!r}: no training examples")
        for split in ("train", "validation", "test"):
            for row, (text, target) in enumerate(getattr(self, split)):
                if not isinstance(text, str) or not text.strip():
                    raise TaskDataError(f"task {self.name!r}, {split} example {row}: empty text")
                if not isinstance(target, str) or not target.strip():
                    raise TaskDataError(f"task {self.name!r}, {split} example {row}: empty target")

    @classmethod
    def from_pairs(
        cls,
        name: str,
        pairs: Iterable[tuple[str, object]],
        *,
        kind: TaskKind = "classify",
        metric: str = "exact_match",
        max_new_tokens: int | None = None,
        stop: Sequence[str] = (),
        test_fraction: float = 0.2,
        validation_fraction: float = 0.1,
        seed: int = 0,
    ) -> Task:
        """Build a task from in-memory ``(text, label)`` pairs, or ``(text, target)`` pairs with
        ``kind="generate"`` (``metric``, ``max_new_tokens`` and ``stop``: see `Generation`).

        The split is seeded; stratified by label for classification.
        """
        generation = _generation(kind, metric, max_new_tokens, stop)
        examples = [(text, str(label)) for text, label in pairs]
        train, validation, test = split_examples(
            examples, test_fraction, validation_fraction, seed, stratify=generation is None
        )
        return cls(name=name, train=train, validation=validation, test=test, generation=generation)

    @classmethod
    def from_files(
        cls,
        name: str,
        train: str | Path,
        test: str | Path | None = None,
        validation: str | Path | None = None,
        *,
        kind: TaskKind | None = None,
        metric: str = "exact_match",
        max_new_tokens: int | None = None,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> Task:
        """Load a task from files. Without ``test``, a seeded 20% test split is held out.

        Without ``validation``, 10% of the training examples are held out for early stopping.
        The kind comes from the training file's columns: ``text`` and ``label`` for
        classification, ``text`` and ``target`` for text-to-text (``metric``,
        ``max_new_tokens`` and ``stop``: see `Generation`); ``kind`` chooses where a file has
        both.
        """
        if not isinstance(name, str) or not name.strip():
            # Checked before the files are read, so the error does not blame them.
            raise TaskDataError(f"task name must be a non-empty string, got {name!r}")
        if kind is not None and kind not in KINDS:
            raise TaskDataError(f"unknown task kind {kind!r}; use 'classify' or 'generate'")
        kind, train_rows = read_examples(train, kind)
        generation = _generation(kind, metric, max_new_tokens, stop)
        test_rows = read_examples(test, kind)[1] if test is not None else None
        valid_rows = read_examples(validation, kind)[1] if validation is not None else None
        stratify = generation is None
        if test_rows is None:
            train_rows, _, test_rows = split_examples(train_rows, 0.2, 0.0, seed, stratify=stratify)
        if valid_rows is None:
            train_rows, valid_rows, _ = split_examples(
                train_rows, 0.0, 0.1, seed, stratify=stratify
            )
        try:
            return cls(
                name=name,
                train=train_rows,
                validation=valid_rows,
                test=test_rows,
                generation=generation,
            )
        except TaskDataError as error:
            files = ", ".join(str(p) for p in (train, test, validation) if p is not None)
            raise TaskDataError(f"{files}: {error}") from None

    def label_index(self, label: str) -> int:
        return self.labels.index(label)


def _generation(
    kind: str, metric: str, max_new_tokens: int | None, stop: Sequence[str]
) -> Generation | None:
    if kind not in KINDS:
        raise TaskDataError(f"unknown task kind {kind!r}; use 'classify' or 'generate'")
    if kind == "classify":
        return None
    try:
        return Generation(metric=metric, max_new_tokens=max_new_tokens, stop=tuple(stop))
    except ContinualError as error:
        raise TaskDataError(str(error)) from None


def split_examples(
    examples: Sequence[Example],
    test_fraction: float,
    validation_fraction: float,
    seed: int,
    *,
    stratify: bool = True,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Seeded split into (train, validation, test). Stratified, every label keeps a train
    example; not stratified (free-text targets), the examples are shuffled and cut once."""
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example[1] if stratify else "", []).append(example)
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
    return _checked_rows(path, _records(path), columns)


def _records(path: Path) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .csv or .jsonl")
    content = _decode(path)
    if suffix == ".csv":
        return _csv_records(path, content)
    return _jsonl_records(path, content)


def _checked_rows(
    path: Path, records: list[tuple[int, dict]], columns: Sequence[str]
) -> list[dict[str, str]]:
    suffix = path.suffix.lower()
    rows: list[dict[str, str]] = []
    for number, record in records:
        row: dict[str, str] = {}
        for column in columns:
            if column not in record or record[column] is None:
                raise TaskDataError(f"{path}, row {number}: missing field {column!r}")
            value = record[column]
            if column in ("label", "target") and suffix != ".csv" and not isinstance(value, str):
                # A number would be read as some string other than the one written (1e2 as
                # "100.0"), and 1 and "1" would become one label: labels must be written as text.
                hint = (
                    f"; put the {column} in quotes, as written, if that is the {column}"
                    if isinstance(value, (int, float)) and not isinstance(value, bool)
                    else ""
                )
                raise TaskDataError(
                    f"{path}, row {number}, field {column!r}: a {column} must be a JSON string, "
                    f"got {type(value).__name__} {json.dumps(value)[:40]}{hint}"
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
            if column in ("label", "target") and not value.strip():
                raise TaskDataError(f"{path}, row {number}, field {column!r}: empty {column}")
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
                f"{path}: empty file, expected a header row with 'text' and 'label' (or 'target')"
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
    return read_examples(path, "classify")[1]


def read_examples(path: str | Path, kind: TaskKind | None = None) -> tuple[TaskKind, list[Example]]:
    """The task kind and ``(text, answer)`` pairs of a CSV or JSONL file.

    The answer is the ``label`` column (``classify``) or the ``target`` column (``generate``).
    Without ``kind`` it is the one column of the two the file has (its first row, for JSONL).
    """
    path = Path(path)
    records = _records(path)
    if kind is None:
        first = set(records[0][1]) if records else set()
        if "label" in first and "target" in first:
            raise TaskDataError(
                f"{path}: has both 'label' and 'target' columns; say which the task learns "
                "(kind='classify' or kind='generate'; --kind on the command line)"
            )
        kind = "generate" if "target" in first else "classify"
    answer = ANSWER_FIELD[kind]
    rows = _checked_rows(path, records, ("text", answer))
    return kind, [(row["text"], row[answer]) for row in rows]


def read_texts(path: str | Path) -> list[str]:
    """Read unlabelled inputs: CSV/JSONL with a ``text`` column, or plain text, one per line."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".jsonl", ".json"):
        return [row["text"] for row in read_rows(path, ("text",))]
    texts = [line for line in _LINE_BREAK.split(_decode(path)) if line.strip()]
    if not texts:
        raise TaskDataError(f"{path}: no non-empty lines")
    return texts
