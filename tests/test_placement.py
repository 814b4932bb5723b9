"""Prompts at the query layer (``placement="query_layer"``) on every backbone family.

A deep prompt enters at the query layer, so one pass routes on the lower layers' output and
finishes with each row's prompt. These tests check what that promises: the pass routes exactly
as the stand-alone query does, a mixed batch equals each row alone, nothing below the query
layer is differentiated, and the placement survives saving, export and import.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_backbone_families import FAMILIES, make_backbone

from continual import Backbone, ContinualError, PoolFormatError, PromptPool, TrainingConfig
from continual.placement import prompted_features
from continual.prompt import SoftPrompt
from continual.storage import MANIFEST

TEXTS = ["the red and the blue", "a dog", "the lion and the tiger and the bear were here today"]


@pytest.fixture(scope="module", params=FAMILIES + ["bert"])
def deep_pool(request, tokenizer, synthetic_tasks):
    colours, animals = synthetic_tasks
    if request.param == "bert":
        from conftest import tiny_bert

        from continual import Backbone

        backbone = Backbone(tiny_bert(tokenizer, 0), tokenizer, "tiny-bert", max_length=32)
    else:
        backbone = make_backbone(request.param, tokenizer)
    pool = PromptPool(
        backbone, prompt_length=4, placement="query_layer", training=TrainingConfig(epochs=1)
    )
    pool.learn(colours, progress=False)
    pool.learn(animals, progress=False)
    return pool


def test_deep_prompt_has_one_set_of_vectors_per_layer_from_the_query_layer(deep_pool):
    backbone = deep_pool.backbone
    depth = backbone.num_layers - backbone.query_layer
    assert deep_pool.prompt_shape == (depth, 4, backbone.hidden_size)
    assert all(tuple(e.prompt.shape) == deep_pool.prompt_shape for e in deep_pool.entries)
    assert deep_pool.selector.with_last is False  # the last layer is not there before the prompt


def test_one_pass_routes_exactly_as_the_query_does(deep_pool):
    texts = TEXTS + ["the cat and the wolf", "gold and navy"]
    tasks, scores = deep_pool.route(texts)
    predictions = deep_pool.predict(texts)
    assert [p.task for p in predictions] == [deep_pool.tasks[i] for i in tasks.tolist()]
    assert torch.allclose(
        torch.tensor([p.routing_score for p in predictions]), scores, rtol=1e-4, atol=1e-3
    )


def test_one_pass_answers_equal_the_routed_tasks_answers(deep_pool):
    texts = TEXTS + ["the cat and the wolf"]
    routed = deep_pool.predict(texts)
    forced = deep_pool.predict(texts, tasks=[p.task for p in routed])
    assert [p.label for p in routed] == [p.label for p in forced]
    assert [p.score for p in routed] == pytest.approx([p.score for p in forced], abs=1e-5)


def test_deep_mixed_batch_equals_each_row_alone(deep_pool):
    from conftest import assert_mixed_batch_equals_each_row_alone

    texts = TEXTS + ["the cat and the wolf"]
    assert_mixed_batch_equals_each_row_alone(deep_pool, texts, torch.tensor([0, 1, 0, 1]))


def test_nothing_below_the_query_layer_is_differentiated(deep_pool):
    backbone = deep_pool.backbone
    prompt = SoftPrompt.initialise(
        backbone, 4, "vocab", generator=torch.Generator().manual_seed(0), placement="query_layer"
    )
    seen: dict[int, bool] = {}
    handles = [
        layer.register_forward_hook(
            lambda _m, _a, out, i=i: seen.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).requires_grad
            )
        )
        for i, layer in enumerate(backbone.layers)
    ]
    try:
        batch = backbone.tokenize(TEXTS)
        features = prompted_features(
            backbone, prompt(len(TEXTS)), batch["input_ids"], batch["attention_mask"]
        )
    finally:
        for handle in handles:
            handle.remove()
    features.sum().backward()
    below = [seen[i] for i in range(backbone.query_layer)]
    above = [seen[i] for i in range(backbone.query_layer, backbone.num_layers)]
    assert below == [False] * len(below) and all(above)
    assert prompt.vectors.grad is not None
    # Every layer's vectors steer the features (the last layer's through its own attention).
    assert all(float(layer.abs().sum()) > 0 for layer in prompt.vectors.grad)


def test_a_selector_on_the_last_layer_is_refused_with_the_prompt_at_the_query_layer(
    tiny_backbone,
):
    with pytest.raises(ContinualError, match="last layer"):
        PromptPool(tiny_backbone, placement="query_layer", selector="gaussian_views")
    with pytest.raises(ContinualError, match="placement"):
        PromptPool(tiny_backbone, placement="middle")  # type: ignore[arg-type]


def test_placement_survives_save_load_export_and_import(tiny_backbone, synthetic_tasks, tmp_path):
    colours, animals = synthetic_tasks
    pool = PromptPool(
        tiny_backbone, prompt_length=4, placement="query_layer", training=TrainingConfig(epochs=1)
    )
    pool.learn(colours, progress=False)
    pool.save(tmp_path / "pool")
    manifest = json.loads((tmp_path / "pool" / MANIFEST).read_text())
    assert manifest["placement"] == "query_layer"
    loaded = PromptPool.load(tmp_path / "pool", tiny_backbone)
    assert loaded.placement.name == "query_layer"
    assert [p.label for p in loaded.predict(TEXTS)] == [p.label for p in pool.predict(TEXTS)]

    exported = pool.export_task("colours", tmp_path / "colours.safetensors")
    other = PromptPool(
        tiny_backbone, prompt_length=4, placement="query_layer", training=TrainingConfig(epochs=1)
    )
    other.learn(animals, progress=False)
    other.import_task(exported)
    assert other.tasks == ["animals", "colours"]
    at_input = PromptPool(tiny_backbone, prompt_length=4, selector="gaussian_views")
    with pytest.raises(PoolFormatError, match="placement"):
        at_input.import_task(exported)


def test_a_manifest_with_an_unknown_placement_is_refused(tiny_backbone, synthetic_tasks, tmp_path):
    colours, _ = synthetic_tasks
    pool = PromptPool(tiny_backbone, prompt_length=4, training=TrainingConfig(epochs=1))
    pool.learn(colours, progress=False)
    pool.save(tmp_path / "pool")
    path = tmp_path / "pool" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["placement"] = "sideways"
    path.write_text(json.dumps(manifest))
    with pytest.raises(PoolFormatError, match="'placement'"):
        PromptPool.load(tmp_path / "pool", tiny_backbone)


def test_cli_learns_a_query_layer_pool_and_predicts_with_refusal(tokenizer, tmp_path, capsys):
    """``continual learn --placement query_layer`` on a saved tiny BERT; ``predict --refuse``."""
    from conftest import tiny_bert

    from continual.cli import main

    folder = tmp_path / "tiny-bert"
    tiny_bert(tokenizer, 0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = [("the red and the pink here", "warm"), ("the blue and the teal now", "cool")] * 8
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    pool = tmp_path / "pool"
    common = ["--backbone", str(folder), "--no-progress"]
    learn = ["learn", str(pool), "--task", "colours", "--train", str(train), "--epochs", "1"]
    options = ["--prompt-length", "4", "--max-length", "32", "--placement", "query_layer"]
    assert main([*learn, *options, *common]) == 0
    capsys.readouterr()
    assert main(["info", str(pool), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["placement"] == "query_layer"
    predict = ["predict", str(pool), "the red one", "--backbone", str(folder)]
    assert main([*predict, "--refuse", "0.2"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[0])
    loaded = PromptPool.load(pool, Backbone.load(folder, max_length=32))
    assert answer == loaded.predict(["the red one"], refuse=0.2)[0].to_dict()
    assert main([*predict, "--refuse", "0.5"]) == 2
    assert "refuse must be a share" in capsys.readouterr().err


def test_nearest_tokens_are_refused_for_a_deep_prompt(deep_pool):
    from continual import TaskDataError
    from continual.explain import nearest_tokens, prompt_similarity

    with pytest.raises(TaskDataError, match="deep prompt"):
        nearest_tokens(deep_pool, "colours")
    similarity = prompt_similarity(deep_pool)
    assert similarity.shape == (2, 2) and torch.allclose(similarity.diagonal(), torch.ones(2))


def test_one_pass_refuses_exactly_what_route_refuses(deep_pool):
    texts = TEXTS + ["the cat and the wolf", "gold and navy", "quarterly earnings beat forecasts"]
    for share in (0.05, 0.2):
        routed, _ = deep_pool.route(texts, refuse=share)
        answers = deep_pool.predict(texts, refuse=share, batch_size=2)
        assert [p.task is None for p in answers] == (routed == -1).tolist()


def test_query_layer_placement_needs_a_layer_above_the_query_layer(tokenizer):
    from conftest import tiny_bert

    backbone = Backbone(tiny_bert(tokenizer, 0), tokenizer, "tiny-bert", query_layer=2)
    with pytest.raises(ContinualError, match="query_layer 2 of 2 layers"):
        PromptPool(backbone, placement="query_layer")
