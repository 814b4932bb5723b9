"""Shared fixtures: a tiny random BERT (fast), two separable synthetic tasks, and the real MiniLM.

The tiny backbone uses the packaged MiniLM tokenizer, so everything here runs offline.
"""

from __future__ import annotations

import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import continual
from continual import Backbone, PromptPool, Task, TrainingConfig

COLOURS = {
    "warm": ["red", "orange", "yellow", "gold", "pink", "amber", "crimson"],
    "cool": ["blue", "green", "purple", "cyan", "teal", "navy", "violet"],
}
ANIMALS = {
    "pet": ["dog", "cat", "hamster", "rabbit", "parrot", "puppy", "kitten"],
    "wild": ["lion", "tiger", "wolf", "bear", "eagle", "shark", "leopard"],
}
ENDINGS = ["here", "there", "today", "again", "now", "outside", "at night", "in town"]


# Fixtures that load the real packaged MiniLM (directly or through `continual learn`).
REAL_MODEL_FIXTURES = {"minilm", "built", "pool_copy"}


def pytest_collection_modifyitems(items):
    """Every test that loads the real MiniLM is ``slow``, whether or not it says so."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(continual.backbone.default_model_path())


def tiny_bert(tokenizer, seed: int = 0, layers: int = 2):
    """A ``layers``-layer (2), 32-wide random BERT with the MiniLM vocabulary, built with
    ``seed``."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return BertModel(config)


def tiny_llama(tokenizer, seed: int = 0):
    """A 2-layer, 32-wide random Llama with the MiniLM vocabulary and tied embeddings (so that
    verbalizer heads have output embeddings), built with ``seed``."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaModel(config)


def tiny_family(family: str, vocab: int):
    """(model class, config) of a 2-layer, 32-wide random model of ``family``: distilbert,
    roberta, t5 (encoder), llama, gpt2 or qwen2."""
    import transformers as hf

    if family == "distilbert":
        return hf.DistilBertModel, hf.DistilBertConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=128,
        )
    if family == "roberta":
        # pad_token_id 0 is the MiniLM tokenizer's [PAD]: positions start at 1.
        return hf.RobertaModel, hf.RobertaConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=130,
            pad_token_id=0,
        )
    if family == "t5":
        return hf.T5EncoderModel, hf.T5Config(
            vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2
        )
    # Llama and Qwen2 take the same sizes.
    sizes = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if family == "llama":
        return hf.LlamaModel, hf.LlamaConfig(**sizes)
    if family == "qwen2":
        return hf.Qwen2Model, hf.Qwen2Config(**sizes)
    if family == "gpt2":
        return hf.GPT2Model, hf.GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=128,
            bos_token_id=None,
            eos_token_id=None,
        )
    raise AssertionError(family)


@pytest.fixture(scope="session")
def tiny_backbone(tokenizer) -> Backbone:
    return Backbone(tiny_bert(tokenizer, 0), tokenizer, "tiny-bert", max_length=32)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """The tiny random BERT (seed 0) and the tokenizer saved in a folder: a backbone to name by
    path, as the command line and the server do."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_bert(tokenizer, 0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def make_tiny_model(tokenizer):
    """Builds another tiny random BERT: ``make_tiny_model(seed)``."""
    return lambda seed=0: tiny_bert(tokenizer, seed)


def synthetic_pairs(
    groups: dict[str, list[str]], per_label: int, seed: int
) -> list[tuple[str, str]]:
    """``per_label`` short sentences per label, each using two words of that label's list."""
    rng = random.Random(seed)
    pairs = []
    for label, words in groups.items():
        seen = set()
        while len([1 for _, gold in pairs if gold == label]) < per_label:
            first, second = rng.sample(words, 2)
            text = f"the {first} and the {second} {rng.choice(ENDINGS)}"
            if text not in seen:
                seen.add(text)
                pairs.append((text, label))
    return pairs


@pytest.fixture(scope="session")
def synthetic_tasks() -> tuple[Task, Task]:
    """Two clearly separable tasks: colour words (warm/cool) and animal words (pet/wild)."""
    colours = Task.from_pairs("colours", synthetic_pairs(COLOURS, 40, seed=1), seed=0)
    animals = Task.from_pairs("animals", synthetic_pairs(ANIMALS, 40, seed=2), seed=0)
    return colours, animals


@pytest.fixture
def tiny_pool_factory(tiny_backbone):
    """Fresh tiny pools: short prompts, one or two epochs, so a task learns in about a second."""

    def make(selector="prototypes", epochs: int = 1, prompt_length: int = 4) -> PromptPool:
        return PromptPool(
            tiny_backbone,
            prompt_length=prompt_length,
            selector=selector,
            training=TrainingConfig(epochs=epochs, batch_size=32),
        )

    return make


@pytest.fixture(scope="session")
def minilm() -> Backbone:
    """The real packaged all-MiniLM-L6-v2, truncating inputs to 64 tokens."""
    return Backbone.load(max_length=64)


# -- Avalanche: token-id benchmarks padded to 16 ----------------------------------------------


@pytest.fixture(scope="session")
def avalanche_backbone() -> Backbone:
    """A 2-layer, 32-wide BERT with random weights and the packaged (uncased) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(continual.backbone.default_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return Backbone(BertModel(config), tokenizer, "tiny-bert", max_length=16)


@pytest.fixture
def avalanche_tasks() -> list[Task]:
    """Two tiny tasks: sport (win/loss) and food (yum/yuck/meh), with validation splits."""
    sport = Task(
        "sport",
        train=[
            ("The Match was WON", "win"),
            ("They lost the game", "loss"),
            ("A late goal won it", "win"),
            ("It's a heavy defeat.", "loss"),
        ]
        * 3,
        test=[("A great win", "win"), ("A bad loss", "loss")],
        validation=[("Won again", "win"), ("Lost again", "loss")],
    )
    food = Task(
        "food",
        train=[("Tasty soup", "yum"), ("Awful bread", "yuck"), ("It's fine.", "meh")] * 3,
        test=[("Tasty cake", "yum"), ("Awful fish", "yuck"), ("It is ok", "meh")],
        validation=[("Tasty", "yum"), ("Awful", "yuck"), ("Fine", "meh")],
    )
    return [sport, food]


def assert_mixed_batch_equals_each_row_alone(pool, texts, tasks) -> None:
    """A batch mixing tasks gives each row the logits it gets alone (no leak across rows)."""
    backbone = pool.backbone
    batch = backbone.tokenize(texts)
    mixed = pool.task_logits(tasks, batch["input_ids"], batch["attention_mask"])
    for row, text in enumerate(texts):
        alone = backbone.tokenize([text])
        logits = pool.task_logits(tasks[row : row + 1], alone["input_ids"], alone["attention_mask"])
        assert torch.allclose(mixed[row], logits[0], atol=1e-5), row


def count_task_file_reads(monkeypatch) -> list[str]:
    """The task files read from now on (their names in the manifest), appended as they are."""
    from continual import storage

    reads: list[str] = []
    original = storage.read_task_file

    def counted(pool_dir, relative, sha256):
        reads.append(relative)
        return original(pool_dir, relative, sha256)

    monkeypatch.setattr(storage, "read_task_file", counted)
    return reads
