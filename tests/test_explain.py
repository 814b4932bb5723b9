"""Explanations: nearest tokens of prompt vectors, prompt similarity, routing decisions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from continual import PromptPool, PrototypeSelector, TaskDataError, TaskEntry
from continual.explain import explain_routing, nearest_tokens, prompt_similarity

COLOUR_TEXTS = ["the red and the blue", "green and purple paint", "a yellow and orange sky"]
ANIMAL_TEXTS = ["the dog and the cat", "a lion and a tiger", "the wolf and the bear"]


def entry(backbone, name: str, words: list[str], texts: list[str], bias=(0.0, 1.0)) -> TaskEntry:
    """A hand-made entry: the prompt is the embeddings of ``words``, the prototypes are the
    query features of ``texts``, and the head's bias alone decides the label."""
    ids = backbone.tokenizer.convert_tokens_to_ids(words)
    return TaskEntry(
        name=name,
        labels=["a", "b"],
        prompt=backbone.embedding_matrix[torch.tensor(ids)].detach().clone(),
        head_weight=torch.zeros(2, backbone.hidden_size),
        head_bias=torch.tensor(bias),
        selector_state={"prototypes": F.normalize(backbone.query(texts), dim=1)},
    )


@pytest.fixture
def pool(tiny_backbone):
    pool = PromptPool(tiny_backbone, prompt_length=3, selector=PrototypeSelector())
    pool.add(entry(tiny_backbone, "colours", ["red", "blue", "green"], COLOUR_TEXTS))
    pool.add(entry(tiny_backbone, "animals", ["dog", "cat", "lion"], ANIMAL_TEXTS, (2.0, 0.0)))
    return pool


def test_nearest_tokens_of_token_embeddings_are_those_tokens(pool):
    nearest = nearest_tokens(pool, "animals", k=3)
    assert len(nearest) == 3
    assert [row[0][0] for row in nearest] == ["dog", "cat", "lion"]
    for row in nearest:
        assert len(row) == 3
        assert row[0][1] == pytest.approx(1.0, abs=1e-3)
        scores = [score for _, score in row]
        assert scores == sorted(scores, reverse=True)
        assert scores[1] < 0.999  # the other tokens are different vectors


def test_nearest_tokens_of_an_unknown_task(pool):
    with pytest.raises(TaskDataError, match="'plants'"):
        nearest_tokens(pool, "plants")


def test_prompt_similarity_is_the_cosine_of_flattened_prompts(pool):
    similarity = prompt_similarity(pool)
    assert similarity.shape == (2, 2)
    flat = [e.prompt.flatten() for e in pool.entries]
    expected = F.cosine_similarity(flat[0], flat[1], dim=0)
    assert similarity[0, 1].item() == pytest.approx(expected.item(), abs=1e-5)
    assert torch.allclose(similarity, similarity.T)
    assert torch.allclose(similarity.diagonal(), torch.ones(2), atol=1e-5)
    assert similarity[0, 1].item() < 0.99


def test_explain_routing_matches_the_selector_and_predictions(pool):
    texts = COLOUR_TEXTS + ANIMAL_TEXTS
    explained = explain_routing(pool, texts)
    scores = pool.selector.task_scores(
        pool.backbone.query(texts), [e.selector_state for e in pool.entries]
    )
    predictions = pool.predict(texts)
    assert [item["text"] for item in explained] == texts
    for item, row, prediction in zip(explained, scores.tolist(), predictions):
        assert item["routing"] == {
            "colours": pytest.approx(row[0], abs=1e-4),
            "animals": pytest.approx(row[1], abs=1e-4),
        }
        # Ranked best first; the margin is the gap to the runner-up.
        assert list(item["routing"].values()) == sorted(item["routing"].values(), reverse=True)
        assert item["margin"] == pytest.approx(abs(row[0] - row[1]), abs=2e-4)
        assert item["task"] == prediction.task == next(iter(item["routing"]))
        assert item["label"] == prediction.label
        assert item["score"] == pytest.approx(prediction.score, abs=1e-4)
    # The texts the prototypes were made of route home (cosine 1 with their own prototype).
    assert [item["task"] for item in explained] == ["colours"] * 3 + ["animals"] * 3
    # The bias-only heads decide the labels: "b" for colours, "a" for animals.
    assert [item["label"] for item in explained] == ["b"] * 3 + ["a"] * 3


def test_explain_routing_with_one_task_has_no_margin(tiny_backbone):
    pool = PromptPool(tiny_backbone, prompt_length=3, selector=PrototypeSelector())
    pool.add(entry(tiny_backbone, "colours", ["red", "blue", "green"], COLOUR_TEXTS))
    [item] = explain_routing(pool, ["a red rose"])
    assert item["margin"] is None and item["task"] == "colours"
    assert list(item["routing"]) == ["colours"]
