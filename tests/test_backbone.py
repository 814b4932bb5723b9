"""The frozen backbone and soft prompt initialisation, on the tiny random BERT."""
from __future__ import annotations

import copy

import pytest
import torch

from continual import Backbone, ContinualError, SoftPrompt
from continual.prompt import prompted_features

TEXTS = ["the red and the blue", "a dog", "the lion and the tiger and the bear were here today"]


def reference_features(model, backbone: Backbone, texts, layer: int) -> torch.Tensor:
    """Mean of hidden_states[layer] over attended tokens, from the full model."""
    batch = backbone.tokenize(texts)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    hidden = out.hidden_states[layer]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def test_every_parameter_frozen_and_eval_even_after_train(tiny_backbone):
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    returned = tiny_backbone.train()
    assert returned is tiny_backbone
    assert not any(module.training for module in tiny_backbone.modules())
    tiny_backbone.train(True)
    assert not tiny_backbone.model.training


def test_constructor_freezes_a_model_in_train_mode(tokenizer, make_tiny_model):
    model = make_tiny_model(0).train()
    assert model.training and all(p.requires_grad for p in model.parameters())
    Backbone(model, tokenizer, "tiny", max_length=32)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_features_are_deterministic_with_dropout_configured(tiny_backbone):
    # BERT's config has dropout 0.1: two passes agree only if the model stays in eval mode.
    tiny_backbone.train()
    batch = tiny_backbone.tokenize(TEXTS)
    embeds = tiny_backbone.embed(batch["input_ids"])
    with torch.no_grad():
        first = tiny_backbone.encode(embeds, batch["attention_mask"])
        second = tiny_backbone.encode(embeds, batch["attention_mask"])
    assert torch.equal(first, second)


@pytest.mark.parametrize("layer", [1, 2])
def test_query_layer_features_match_full_model_hidden_states(tiny_backbone, layer):
    model = tiny_backbone.model
    shallow = Backbone(model, tiny_backbone.tokenizer, "tiny", max_length=32, query_layer=layer)
    expected = reference_features(model, shallow, TEXTS, layer)
    got = shallow.query(TEXTS)
    assert got.shape == (3, 32)
    assert torch.allclose(got, expected, atol=1e-5)
    # Truncation must not cut the shared model's own layers: it still runs both.
    assert len(model.encoder.layer) == 2
    batch = shallow.tokenize(TEXTS)
    with torch.no_grad():
        last = model(**batch, output_hidden_states=True)
    assert torch.equal(last.last_hidden_state, last.hidden_states[2])


def test_default_query_layer_is_used_for_queries(tiny_backbone):
    layer = tiny_backbone.query_layer
    assert 1 <= layer <= 2
    expected = reference_features(tiny_backbone.model, tiny_backbone, TEXTS, layer)
    assert torch.allclose(tiny_backbone.query(TEXTS), expected, atol=1e-5)
    assert tiny_backbone.fingerprint()["query_layer"] == layer


def test_query_layers_differ(tiny_backbone):
    model = tiny_backbone.model
    first = Backbone(model, tiny_backbone.tokenizer, "tiny", max_length=32, query_layer=1)
    last = Backbone(model, tiny_backbone.tokenizer, "tiny", max_length=32, query_layer=2)
    assert not torch.allclose(first.query(TEXTS), last.query(TEXTS), atol=1e-3)
    assert first.fingerprint()["query_layer"] == 1
    assert last.fingerprint()["query_layer"] == 2
    assert first.fingerprint()["weights_sha256"] == last.fingerprint()["weights_sha256"]


@pytest.mark.parametrize("layer", [0, 3, -1])
def test_query_layer_out_of_range_is_refused(tiny_backbone, layer):
    with pytest.raises(ContinualError, match="query_layer"):
        Backbone(tiny_backbone.model, tiny_backbone.tokenizer, "tiny", max_length=32,
                 query_layer=layer)


def test_max_length_beyond_positions_is_refused(tiny_backbone):
    with pytest.raises(ContinualError, match="128"):
        Backbone(tiny_backbone.model, tiny_backbone.tokenizer, "tiny", max_length=200)


def test_query_cache_returns_identical_tensors_without_recomputing(tiny_backbone):
    backbone = Backbone(tiny_backbone.model, tiny_backbone.tokenizer, "tiny", max_length=32)
    first = backbone.query(TEXTS)

    def refuse(*_, **__):
        raise AssertionError("a cached text was encoded again")

    backbone.tokenize = refuse
    again = backbone.query(list(reversed(TEXTS)) + [TEXTS[0]])
    assert torch.equal(again[0], first[2]) and torch.equal(again[2], first[0])
    assert torch.equal(again[3], first[0])
    assert backbone.query([]).shape == (0, 32)


def test_query_of_a_batch_matches_each_text_alone(tiny_backbone):
    together = tiny_backbone.query(TEXTS)
    fresh = Backbone(tiny_backbone.model, tiny_backbone.tokenizer, "tiny", max_length=32)
    for i, text in enumerate(TEXTS):
        assert torch.allclose(fresh.query([text])[0], together[i], atol=1e-5)


def test_tokenize_truncates_to_max_length(tiny_backbone):
    batch = tiny_backbone.tokenize(["word " * 100, "short"])
    assert batch["input_ids"].shape == (2, 32)
    assert batch["attention_mask"][1].sum().item() < 32


def test_fingerprint_changes_when_embedding_weights_change(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    same = Backbone(model, tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    assert same.fingerprint() == tiny_backbone.fingerprint()
    with torch.no_grad():
        model.get_input_embeddings().weight[1234, 0] += 1e-3
    changed = Backbone(model, tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    assert (changed.fingerprint()["weights_sha256"]
            != tiny_backbone.fingerprint()["weights_sha256"])


def test_fingerprint_changes_when_only_encoder_weights_change(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight[0, 0] *= 1.5
    changed = Backbone(model, tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    assert torch.equal(changed.embedding_matrix, tiny_backbone.embedding_matrix)
    assert (changed.fingerprint()["weights_sha256"]
            != tiny_backbone.fingerprint()["weights_sha256"])


def test_fingerprint_records_shape_and_settings(tiny_backbone):
    fingerprint = tiny_backbone.fingerprint()
    assert fingerprint["hidden_size"] == 32
    assert fingerprint["num_layers"] == 2
    assert fingerprint["vocab_size"] == len(tiny_backbone.tokenizer)
    assert fingerprint["max_length"] == 32
    assert fingerprint["model_type"] == "bert"
    # A copy is returned: editing it does not change the backbone's identity.
    fingerprint["hidden_size"] = 0
    assert tiny_backbone.fingerprint()["hidden_size"] == 32


# -- soft prompts --------------------------------------------------------------------------------


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
    again = SoftPrompt.initialise(tiny_backbone, 6, "vocab",
                                  generator=torch.Generator().manual_seed(0))
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
    prompt = SoftPrompt.initialise(tiny_backbone, 3, "vocab",
                                   generator=torch.Generator().manual_seed(0))
    assert prompt(4).shape == (4, 3, 32)
    batch = tiny_backbone.tokenize(TEXTS)
    with torch.no_grad():
        plain = tiny_backbone.encode(tiny_backbone.embed(batch["input_ids"]),
                                     batch["attention_mask"])
        prompted = prompted_features(tiny_backbone, prompt(3), batch["input_ids"],
                                     batch["attention_mask"])
    assert prompted.shape == plain.shape == (3, 32)
    assert not torch.allclose(prompted, plain, atol=1e-4)


def test_prompt_gradients_reach_the_prompt_only(tiny_backbone):
    prompt = SoftPrompt.initialise(tiny_backbone, 2, "vocab",
                                   generator=torch.Generator().manual_seed(0))
    batch = tiny_backbone.tokenize(TEXTS[:2])
    features = prompted_features(tiny_backbone, prompt(2), batch["input_ids"],
                                 batch["attention_mask"])
    features.sum().backward()
    assert prompt.vectors.grad is not None and prompt.vectors.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
