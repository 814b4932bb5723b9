"""The frozen backbone and soft prompt initialisation, on the tiny random BERT."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from continual import Backbone, ContinualError
from continual.tokens import CHARACTERS_PER_TOKEN, cut_at_space, tokenize

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
        Backbone(
            tiny_backbone.model, tiny_backbone.tokenizer, "tiny", max_length=32, query_layer=layer
        )


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


def test_long_texts_tokenize_as_the_whole_text_would(tiny_backbone):
    bound = CHARACTERS_PER_TOKEN * tiny_backbone.max_length
    texts = [
        "the quick brown fox jumps. " * 200,  # cut at a space before the bound
        "x" * 150 + " " + "y" * (2 * bound),  # long words: the cut text is too short
        "z" * (2 * bound),  # no space to cut at
        "a short one",
    ]
    whole = tiny_backbone.tokenizer(
        texts, padding=True, truncation=True, max_length=tiny_backbone.max_length
    )
    batch = tiny_backbone.tokenize(texts)
    assert batch["input_ids"].tolist() == whole["input_ids"]
    assert batch["attention_mask"].tolist() == whole["attention_mask"]
    # The first text was really cut.
    assert cut_at_space(texts[0], tiny_backbone.max_length) != texts[0]


def test_a_left_truncating_tokenizer_gets_the_end_of_a_long_text(tiny_backbone):
    tokenizer = copy.deepcopy(tiny_backbone.tokenizer)
    tokenizer.truncation_side = "left"
    texts = ["the quick brown fox jumps. " * 200 + "the lion and the tiger", "a dog"]
    whole = tokenizer(texts, padding=True, truncation=True, max_length=32)
    batch = tokenize(tokenizer, texts, 32)
    assert batch["input_ids"].tolist() == whole["input_ids"]
    assert batch["attention_mask"].tolist() == whole["attention_mask"]


def test_fingerprint_changes_when_embedding_weights_change(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    same = Backbone(model, tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    assert same.fingerprint() == tiny_backbone.fingerprint()
    with torch.no_grad():
        model.get_input_embeddings().weight[1234, 0] += 1e-3
    changed = Backbone(model, tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    assert changed.fingerprint()["weights_sha256"] != tiny_backbone.fingerprint()["weights_sha256"]


def test_fingerprint_changes_when_only_encoder_weights_change(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight[0, 0] *= 1.5
    changed = Backbone(model, tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    assert torch.equal(changed.embedding_matrix, tiny_backbone.embedding_matrix)
    assert changed.fingerprint()["weights_sha256"] != tiny_backbone.fingerprint()["weights_sha256"]


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


@pytest.mark.slow
def test_loading_the_packaged_model_changes_no_process_state():
    """No HF_HUB_OFFLINE set for the whole process, and HF's progress bars left as they were."""
    code = (
        "import os; from transformers.utils import logging;"
        "logging.disable_progress_bar(); before = dict(os.environ);"
        "from continual import Backbone; backbone = Backbone.load();"
        "assert dict(os.environ) == before, set(os.environ) ^ set(before);"
        "assert not logging.is_progress_bar_enabled();"
        "assert backbone.device.type == 'cpu'"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


def test_query_cache_is_bounded(tiny_backbone):
    small = Backbone(
        tiny_backbone.model, tiny_backbone.tokenizer, "tiny-bert", max_length=32, query_cache_size=2
    )
    first = small.query(TEXTS)  # three texts through a cache of two
    assert len(small._query_cache) == 2
    # Recomputed in other batches (other padding): equal up to float rounding.
    assert torch.allclose(small.query(TEXTS), first, atol=1e-5)
    with pytest.raises(ContinualError, match="query_cache_size"):
        Backbone(tiny_backbone.model, tiny_backbone.tokenizer, "t", query_cache_size=-1)


def test_a_backbone_can_be_deep_copied_with_a_lock_of_its_own(tiny_backbone):
    """Avalanche deep-copies the model in several strategies (LwF, GDumb...), backbone and all."""
    texts = ["one text", "and another one"]
    expected = tiny_backbone.query(texts, with_last=True)  # every layer has run
    copied = copy.deepcopy(tiny_backbone)
    assert copied.lock is not tiny_backbone.lock
    with copied.lock:  # a working re-entrant lock
        torch.testing.assert_close(copied.query(texts, with_last=True), expected)
