"""Soft prompts: initialisation and the prompted forward pass, on the tiny random BERT."""

from __future__ import annotations

import pytest
import torch

from continual import ContinualError, SoftPrompt
from continual.placement import prompted_features

TEXTS = ["the red and the blue", "a dog", "the lion and the tiger and the bear were here today"]


def test_text_init_is_the_texts_token_embeddings_repeated(tiny_backbone):
    ids = tiny_backbone.tokenizer("red blue", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    prompt = SoftPrompt.initialise(tiny_backbone, 5, "text", text="red blue")
    expected = tiny_backbone.embed(torch.tensor([ids[0], ids[1], ids[0], ids[1], ids[0]]))
    assert torch.equal(prompt.vectors.detach(), expected)
    assert prompt.vectors.requires_grad
    # A prompt shorter than the text keeps the text's first tokens.
    short = SoftPrompt.initialise(tiny_backbone, 1, "text", text="red blue")
    assert torch.equal(short.vectors.detach(), expected[:1])


def test_vocab_init_rows_are_rows_of_the_embedding_matrix(tiny_backbone):
    table = tiny_backbone.embedding_matrix.detach()
    generator = torch.Generator().manual_seed(0)
    prompt = SoftPrompt.initialise(tiny_backbone, 6, "vocab", generator=generator)
    for row in prompt.vectors.detach():
        matches = (table == row).all(dim=1).nonzero().flatten().tolist()
        assert matches, "each vector is a vocabulary embedding"
        assert all(index >= 1000 for index in matches), "special and unused ids are skipped"
    again = SoftPrompt.initialise(
        tiny_backbone, 6, "vocab", generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.vectors, prompt.vectors)


def test_random_init_matches_the_embedding_spread(tiny_backbone):
    generator = torch.Generator().manual_seed(0)
    prompt = SoftPrompt.initialise(tiny_backbone, 64, "random", generator=generator)
    spread = tiny_backbone.embedding_matrix.std().item()
    assert prompt.vectors.shape == (64, 32)
    assert prompt.vectors.std().item() == pytest.approx(spread, rel=0.15)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"length": 4, "init": "zeros"}, "unknown prompt init"),
        ({"length": 0, "init": "vocab"}, "at least 1"),
        ({"length": 4, "init": "text"}, "non-empty text"),
        ({"length": 4, "init": "text", "text": "   "}, "non-empty text"),
    ],
)
def test_bad_prompt_settings_are_refused(tiny_backbone, kwargs, message):
    with pytest.raises(ContinualError, match=message):
        SoftPrompt.initialise(tiny_backbone, **kwargs)


def test_prompt_expands_per_batch_and_steers_features(tiny_backbone):
    prompt = SoftPrompt.initialise(
        tiny_backbone, 3, "vocab", generator=torch.Generator().manual_seed(0)
    )
    assert prompt(4).shape == (4, 3, 32)
    batch = tiny_backbone.tokenize(TEXTS)
    with torch.no_grad():
        plain = tiny_backbone.encode(
            tiny_backbone.embed(batch["input_ids"]), batch["attention_mask"]
        )
        prompted = prompted_features(
            tiny_backbone, prompt(3), batch["input_ids"], batch["attention_mask"]
        )
    assert prompted.shape == plain.shape == (3, 32)
    assert not torch.allclose(prompted, plain, atol=1e-4)


def test_prompt_gradients_reach_the_prompt_only(tiny_backbone):
    prompt = SoftPrompt.initialise(
        tiny_backbone, 2, "vocab", generator=torch.Generator().manual_seed(0)
    )
    batch = tiny_backbone.tokenize(TEXTS[:2])
    features = prompted_features(
        tiny_backbone, prompt(2), batch["input_ids"], batch["attention_mask"]
    )
    features.sum().backward()
    assert prompt.vectors.grad is not None and prompt.vectors.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
