"""Saved lower-layer states for deep prompts: the same features and training, fewer layers run."""

from __future__ import annotations

import torch
from conftest import tiny_bert

from continual import prompt as prompt_module
from continual.backbone import Backbone
from continual.data import Task
from continual.learner import TrainingConfig, train_task
from continual.placement import prompted_features
from continual.prompt import SoftPrompt


def four_layer_backbone(tokenizer) -> Backbone:
    """A 4-layer random BERT whose deep prompts start at layer 2 (two layers below them)."""
    return Backbone(
        tiny_bert(tokenizer, 0, layers=4), tokenizer, "tiny-bert-4", max_length=32, query_layer=2
    )


def test_features_from_saved_states_match_a_full_pass(tokenizer):
    backbone = four_layer_backbone(tokenizer)
    prompt = SoftPrompt.initialise(
        backbone, 4, "random", generator=torch.Generator().manual_seed(0), placement="query_layer"
    )
    texts = ["a short one", "a much longer text with many more words than the first one has"]
    batch = backbone.tokenize(texts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # Each text's states computed alone (no padding), as the trainer saves them.
    rows = [backbone.lower_states(**backbone.tokenize([t]), length=4, start=2)[0] for t in texts]
    lower = torch.zeros(len(texts), ids.shape[1], backbone.hidden_size)
    for i, row in enumerate(rows):
        lower[i, : row.shape[0]] = row
    layers = list(backbone.layers)
    ran: list[int] = []
    handles = [
        layer.register_forward_pre_hook(lambda _m, _a, i=i: ran.append(i))
        for i, layer in enumerate(layers)
    ]
    try:
        skipped = prompted_features(backbone, prompt(2), ids, mask, lower)
        assert ran == [2, 3]  # the layers below the prompt were not run
        ran.clear()
        full = prompted_features(backbone, prompt(2), ids, mask)
        assert ran == [0, 1, 2, 3]
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(skipped, full, atol=1e-5, rtol=1e-4)
    assert list(backbone.layers) == layers  # the layer list is whole again


def test_gradients_reach_the_prompt_from_saved_states(tokenizer):
    backbone = four_layer_backbone(tokenizer)
    prompt = SoftPrompt.initialise(backbone, 4, "vocab", placement="query_layer")
    batch = backbone.tokenize(["some words here", "and more"])
    lower = backbone.lower_states(batch["input_ids"], batch["attention_mask"], 4, 2)
    features = prompted_features(
        backbone, prompt(2), batch["input_ids"], batch["attention_mask"], lower
    )
    features.sum().backward()
    assert prompt.vectors.grad is not None and prompt.vectors.grad.abs().sum() > 0


def test_training_with_saved_states_matches_training_without(tokenizer, monkeypatch):
    backbone = four_layer_backbone(tokenizer)
    pairs = [(f"the {w} item number {i}", w) for i in range(12) for w in ("red", "blue")]
    task = Task("colours", train=pairs[:16], validation=pairs[16:], labels=["blue", "red"])
    config = TrainingConfig(epochs=2, batch_size=8, patience=0)
    saved = train_task(backbone, task, 4, config, progress=False, placement="query_layer")
    monkeypatch.setattr(prompt_module, "LOWER_STATES_BYTES", 0)  # too big: every layer runs
    full = train_task(backbone, task, 4, config, progress=False, placement="query_layer")
    torch.testing.assert_close(saved.prompt, full.prompt, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(saved.head_weight, full.head_weight, atol=1e-4, rtol=1e-4)
    assert saved.stats["validation_accuracy"] == full.stats["validation_accuracy"]


def test_saved_states_refused_where_they_would_not_be_exact(tokenizer, monkeypatch):
    backbone = four_layer_backbone(tokenizer)
    prompt = SoftPrompt.initialise(backbone, 4, "vocab", placement="query_layer")
    texts = ["one text", "another text"]
    assert prompt_module.LowerStates.build(backbone, prompt, texts, 8) is not None
    # A model whose layers hand more than hidden states up (T5's position bias) would give
    # other features from saved states: the check finds that and training runs every layer.
    monkeypatch.setattr(
        prompt_module.LowerStates,
        "batch",
        lambda self, texts, mask: torch.randn(len(texts), mask.shape[1], backbone.hidden_size),
    )
    assert prompt_module.LowerStates.build(backbone, prompt, texts, 8) is None
    flat = SoftPrompt.initialise(backbone, 4, "vocab")  # an input prompt has nothing below it
    assert prompt_module.LowerStates.build(backbone, flat, texts, 8) is None


def test_a_deep_prompt_pass_and_a_plain_pass_in_two_threads_do_not_mix(tokenizer):
    """Training a deep prompt (hooks on the shared layers, a narrowed layer list) in one thread
    while another thread reads query features gives each thread what it gets alone."""
    import threading

    backbone = four_layer_backbone(tokenizer)
    backbone.query_cache_size = 0  # every call runs the model
    prompt = SoftPrompt.initialise(
        backbone, 4, "random", generator=torch.Generator().manual_seed(0), placement="query_layer"
    )
    texts = ["a short one", "a much longer text with many more words than the first one has"]
    batch = backbone.tokenize(texts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lower = backbone.lower_states(ids, mask, length=4, start=2)
    with torch.no_grad():
        deep_alone = prompted_features(backbone, prompt(2), ids, mask, lower)
    plain_alone = backbone.query(texts, with_last=True)
    deep_seen: list[torch.Tensor] = []
    plain_seen: list[torch.Tensor] = []
    failures: list[BaseException] = []

    def repeat(work, into) -> None:
        try:
            for _ in range(40):
                into.append(work())
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    def deep() -> torch.Tensor:
        with torch.no_grad():
            return prompted_features(backbone, prompt(2), ids, mask, lower)

    threads = [
        threading.Thread(target=repeat, args=(deep, deep_seen)),
        threading.Thread(
            target=repeat, args=(lambda: backbone.query(texts, with_last=True), plain_seen)
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len(deep_seen) == len(plain_seen) == 40
    for features in deep_seen:
        torch.testing.assert_close(features, deep_alone)
    for features in plain_seen:
        torch.testing.assert_close(features, plain_alone)
