"""Tokenizing texts of any length quickly, into the tokens of the whole text.

A fast tokenizer encodes the whole string before it truncates, so a 20,000-character text
would cost as much as all of its tokens. A text longer than `CHARACTERS_PER_TOKEN` characters
a token of ``max_length`` is cut at a space before that bound first: the words after the cut
cannot change the tokens before it. Where the cut text falls short of ``max_length`` tokens
(very long words), the whole text is tokenized instead, so the tokens are always those of the
whole text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# A text is cut at a space before this many characters a token of max_length before it is
# tokenized: a fast tokenizer encodes the whole string before it truncates.
CHARACTERS_PER_TOKEN = 16


def cut_at_space(text: str, max_length: int) -> str:
    """``text`` up to its last space before `CHARACTERS_PER_TOKEN` characters a token, or
    ``text`` itself (the same object) where it is shorter or has no space to cut at."""
    bound = CHARACTERS_PER_TOKEN * max_length
    if len(text) <= bound:
        return text
    space = text.rfind(" ", 0, bound)
    return text[:space] if space > 0 else text


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    """Token ids and attention mask (on the CPU), padded on the right to the longest text and
    truncated to ``max_length``: the tokenizer's own output for the whole texts.

    A tokenizer that truncates on the left keeps the end of a text: its texts are not cut.
    """
    texts = list(texts)
    if tokenizer.truncation_side == "right":
        heads = [cut_at_space(text, max_length) for text in texts]
    else:
        heads = list(texts)
    batch = _encode(tokenizer, heads, max_length)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    short = [n for n, (head, text) in enumerate(zip(heads, texts)) if head is not text]
    short = [n for n in short if lengths[n] < max_length]
    if short:
        for number in short:
            heads[number] = texts[number]
        batch = _encode(tokenizer, heads, max_length)
    return batch


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> Any:
    return tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
