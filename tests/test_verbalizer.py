"""Verbalizer heads and the zero-shot hard-prompt baseline, on a tiny random Llama."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_llama

from continual import Backbone, ContinualError, PromptPool, Task, TrainingConfig
from continual.bench.hard_prompt import HardPrompt
from continual.verbalizer import label_token_ids, verbalizer_weight


@pytest.fixture(scope="module")
def llama(tokenizer) -> Backbone:
    return Backbone(
        tiny_llama(tokenizer), copy.deepcopy(tokenizer), "tiny-llama", max_length=32, pooling="last"
    )


def test_verbalizer_needs_last_token_pooling(llama):
    mean = Backbone(llama.model, llama.tokenizer, "tiny-llama", max_length=32)
    with pytest.raises(ContinualError, match="pooling='last'"):
        verbalizer_weight(mean, ["warm", "cool"])


def test_verbalizer_weight_is_the_label_words_output_embeddings(llama):
    weight = verbalizer_weight(llama, ["warm", "cool"])
    ids = label_token_ids(llama, ["warm", "cool"])
    assert torch.equal(weight, llama.embedding_matrix[[ids[0][0], ids[1][0]]].float())


def test_verbalizer_head_is_not_trained(llama, synthetic_tasks):
    pool = PromptPool(llama, prompt_length=4, training=TrainingConfig(epochs=1, head="verbalizer"))
    entry = pool.learn(synthetic_tasks[0], progress=False)
    assert torch.equal(entry.head_weight, verbalizer_weight(llama, entry.labels))
    assert torch.equal(entry.head_bias, torch.zeros(2))
    assert entry.stats["head"] == "verbalizer"
    assert entry.stats["trainable_parameters"] == 4 * 32
    assert pool.predict(["the red and the pink"])[0].label in entry.labels


def test_verbalizer_refuses_an_encoder(tiny_backbone):
    with pytest.raises(ContinualError, match="decoder"):
        verbalizer_weight(tiny_backbone, ["a", "b"])


def test_hard_prompt_is_zero_shot_and_class_incremental(llama, synthetic_tasks):
    colours, animals = synthetic_tasks
    method = HardPrompt(llama)
    method.learn(colours)
    first = method.evaluate(colours)
    method.learn(animals)
    both = method.evaluate(colours)
    assert method.classes == [
        ("colours", "cool"),
        ("colours", "warm"),
        ("animals", "pet"),
        ("animals", "wild"),
    ]
    assert 0 <= both.accuracy <= 100 and first.routing_accuracy == 100.0
    assert sum(both.routed_to.values()) == len(colours.test)
    assert method.cost().trainable_parameters == 0
    scores = method.scores(["a dog", "the red and the blue now"])
    alone = method.scores(["a dog"])
    assert torch.allclose(scores[0], alone[0], atol=1e-4)


def test_hard_prompt_registered(llama):
    from continual.bench.methods import METHODS

    assert METHODS["hard-prompt"].language_model_only
    assert isinstance(Task, type)


def test_hard_prompt_runs_on_a_mean_pooled_backbone_and_shares_label_words(llama):
    mean = Backbone(llama.model, llama.tokenizer, "tiny-llama", max_length=32)
    method = HardPrompt(mean)
    method.learn(Task("a", train=[("x", "yes"), ("y", "no")], test=[("x", "yes")]))
    second = Task("b", train=[("x", "yes"), ("y", "maybe")], test=[("x", "yes"), ("y", "maybe")])
    method.learn(second)
    assert method.classes[1] == ("a", "yes") and method.classes[3] == ("b", "yes")
    assert torch.equal(method.weight[1], method.weight[3])  # "yes" is one answer
    score = method.evaluate(second)
    assert set(score.routed_to) <= {"a", "b"}
