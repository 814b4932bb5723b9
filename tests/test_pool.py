"""The prompt pool: no forgetting by construction, mixed-task batching, persistence, selectors."""

from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from continual import (
    Backbone,
    ContinualError,
    PoolFormatError,
    PromptPool,
    PrototypeSelector,
    Task,
    TaskDataError,
    TaskEntry,
    TrainingConfig,
)
from continual.format import FORMAT_VERSION
from continual.storage import MANIFEST


def snapshot(entry: TaskEntry) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in entry.tensors().items()}


def texts_of(task: Task, split: str = "test") -> list[str]:
    return [text for text, _ in getattr(task, split)]


@pytest.fixture(scope="module")
def grown(tiny_backbone, synthetic_tasks, tmp_path_factory):
    """A pool that learned colours, was saved, then learned animals and was saved again."""
    colours, animals = synthetic_tasks
    pool = PromptPool(tiny_backbone, prompt_length=4, training=TrainingConfig(epochs=2))
    pool.learn(colours, seed=0, progress=False)
    first = snapshot(pool.entries[0])
    directory = tmp_path_factory.mktemp("pool")
    pool.save(directory)
    manifest_before = json.loads((directory / MANIFEST).read_text())
    task_file = directory / manifest_before["tasks"][0]["file"]
    bytes_before = task_file.read_bytes()
    pool.learn(animals, seed=0, progress=False)
    pool.save(directory)
    return SimpleNamespace(
        pool=pool,
        first=first,
        dir=directory,
        task_file=task_file,
        bytes_before=bytes_before,
        manifest_before=manifest_before,
    )


# -- no forgetting ----------------------------------------------------------------------------


def test_earlier_entry_is_bit_identical_after_learning_a_new_task(grown):
    assert grown.pool.tasks == ["colours", "animals"]
    after = grown.pool.entries[0].tensors()
    assert set(after) == set(grown.first)
    for key, tensor in grown.first.items():
        assert torch.equal(after[key], tensor), key


def test_earlier_task_file_is_byte_identical_after_saving_a_new_task(grown):
    manifest = json.loads((grown.dir / MANIFEST).read_text())
    assert [task["name"] for task in manifest["tasks"]] == ["colours", "animals"]
    # The first task's record (file and checksum) is the one written before the second task.
    assert manifest["tasks"][0]["file"] == grown.manifest_before["tasks"][0]["file"]
    assert manifest["tasks"][0]["sha256"] == grown.manifest_before["tasks"][0]["sha256"]
    assert grown.task_file.read_bytes() == grown.bytes_before
    assert manifest["tasks"][1]["file"] != manifest["tasks"][0]["file"]


def test_backbone_weights_unchanged_and_frozen_after_learn(
    tiny_backbone, synthetic_tasks, tiny_pool_factory
):
    before = {name: p.detach().clone() for name, p in tiny_backbone.named_parameters()}
    assert before, "the backbone has parameters"
    pool = tiny_pool_factory()
    pool.learn(synthetic_tasks[0], progress=False)
    for name, parameter in tiny_backbone.named_parameters():
        assert torch.equal(parameter, before[name]), name
        assert parameter.requires_grad is False, name
        assert parameter.grad is None, name


def test_learn_trains_the_prompt_away_from_its_initialisation(
    tiny_backbone, synthetic_tasks, tiny_pool_factory
):
    from continual import SoftPrompt

    pool = tiny_pool_factory()
    entry = pool.learn(synthetic_tasks[0], seed=3, progress=False)
    initial = SoftPrompt.initialise(
        tiny_backbone, 4, "vocab", generator=torch.Generator().manual_seed(3)
    ).vectors.detach()
    assert entry.prompt.shape == initial.shape == (4, 32)
    assert not torch.allclose(entry.prompt, initial)
    assert entry.head_weight.shape == (2, 32) and entry.head_bias.shape == (2,)
    assert entry.labels == synthetic_tasks[0].labels
    assert entry.stats["train_examples"] == len(synthetic_tasks[0].train)


# -- mixed-task batches -----------------------------------------------------------------------


def test_mixed_task_batch_matches_rows_alone(grown, synthetic_tasks):
    colours, animals = synthetic_tasks
    texts = [text for pair in zip(texts_of(colours)[:5], texts_of(animals)[:5]) for text in pair]
    texts.append("the red and the blue and the green and the dog and the cat at night")
    pool = grown.pool
    for tasks in (None, ["colours", "animals"] * 5 + ["animals"]):
        together = pool.predict(texts, tasks=tasks, batch_size=64)
        assert {p.task for p in together} == {"colours", "animals"}, "the batch must mix tasks"
        for i, text in enumerate(texts):
            alone = pool.predict([text], tasks=None if tasks is None else [tasks[i]])[0]
            assert together[i].text == text
            assert (together[i].task, together[i].label) == (alone.task, alone.label)
            assert together[i].score == pytest.approx(alone.score, abs=1e-5)
            assert together[i].routing_score == pytest.approx(alone.routing_score, abs=1e-5)


def test_predictions_follow_the_routed_tasks_labels(grown, synthetic_tasks):
    colours, animals = synthetic_tasks
    predictions = grown.pool.predict(texts_of(colours) + texts_of(animals))
    for prediction in predictions:
        entry = grown.pool.entries[grown.pool.tasks.index(prediction.task)]
        assert prediction.label in entry.labels
        assert 1 / len(entry.labels) <= prediction.score <= 1.0


# -- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_tensors_and_another_seed_differs(
    tiny_pool_factory, synthetic_tasks
):
    task = synthetic_tasks[1]
    first, second, third = tiny_pool_factory(), tiny_pool_factory(), tiny_pool_factory()
    a = first.learn(task, seed=7, progress=False).tensors()
    b = second.learn(task, seed=7, progress=False).tensors()
    c = third.learn(task, seed=8, progress=False).tensors()
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["prompt"], c["prompt"])
    assert not torch.equal(a["head.weight"], c["head.weight"])


# -- persistence ------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_predictions(grown, synthetic_tasks, tiny_backbone):
    colours, animals = synthetic_tasks
    loaded = PromptPool.load(grown.dir, tiny_backbone)
    assert loaded.tasks == grown.pool.tasks
    assert loaded.prompt_length == 4
    assert loaded.selector.config() == grown.pool.selector.config()
    assert loaded.training == grown.pool.training
    for old, new in zip(grown.pool.entries, loaded.entries):
        assert old.labels == new.labels
        for key, tensor in old.tensors().items():
            assert torch.equal(new.tensors()[key], tensor), key
    texts = texts_of(colours) + texts_of(animals)
    before, after = grown.pool.predict(texts), loaded.predict(texts)
    assert [(p.task, p.label) for p in after] == [(p.task, p.label) for p in before]
    assert [p.score for p in after] == [p.score for p in before]
    assert [p.routing_score for p in after] == [p.routing_score for p in before]


def test_manifest_records_format_backbone_settings_and_checksums(grown, tiny_backbone):
    manifest = json.loads((grown.dir / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert manifest["backbone"] == tiny_backbone.fingerprint()
    assert manifest["backbone"]["name"] == "tiny-bert"
    assert manifest["prompt_length"] == 4
    assert manifest["hidden_size"] == 32
    assert manifest["selector"] == grown.pool.selector.config()
    assert [task["labels"] for task in manifest["tasks"]] == [["cool", "warm"], ["pet", "wild"]]
    for record in manifest["tasks"]:
        data = (grown.dir / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
    stored = sorted(p.name for p in (grown.dir / "tasks").iterdir())
    assert stored == sorted(record["file"].split("/")[-1] for record in manifest["tasks"])


# -- refusals ---------------------------------------------------------------------------------


def test_duplicate_task_name_is_refused_and_pool_unchanged(grown, synthetic_tasks):
    pool = grown.pool
    entries = list(pool.entries)
    tensors = [snapshot(entry) for entry in entries]
    renamed = Task("colours", train=synthetic_tasks[1].train)
    with pytest.raises(TaskDataError, match="colours"):
        pool.learn(renamed, progress=False)
    assert pool.tasks == ["colours", "animals"]
    assert all(a is b for a, b in zip(pool.entries, entries))
    for entry, saved in zip(pool.entries, tensors):
        assert all(torch.equal(entry.tensors()[key], saved[key]) for key in saved)


def test_predict_on_an_empty_pool_is_refused(tiny_pool_factory):
    with pytest.raises(TaskDataError, match="no task"):
        tiny_pool_factory().predict(["the red and the blue"])


def test_oracle_tasks_argument_routes_to_the_named_task(grown, synthetic_tasks):
    colours = synthetic_tasks[0]
    predictions = grown.pool.predict(texts_of(colours), tasks="animals")
    assert {p.task for p in predictions} == {"animals"}
    assert {p.label for p in predictions} <= {"pet", "wild"}
    assert all(p.routing_score == 1.0 for p in predictions)
    # ...whereas routing sends the same colour texts to the colour task.
    assert {p.task for p in grown.pool.predict(texts_of(colours))} == {"colours"}


def test_unknown_task_name_and_wrong_task_count_are_refused(grown):
    with pytest.raises(TaskDataError, match="plants"):
        grown.pool.predict(["the dog"], tasks="plants")
    with pytest.raises(TaskDataError, match="2 task names for 1 texts"):
        grown.pool.predict(["the dog"], tasks=["animals", "colours"])
    with pytest.raises(TaskDataError, match="plants"):
        grown.pool.evaluate("plants", [("the dog", "pet")])


def test_refused_inputs_get_no_task_and_no_label(tiny_backbone, synthetic_tasks, tiny_pool_factory):
    # A cosine threshold above 1 refuses every input.
    pool = tiny_pool_factory(selector=PrototypeSelector(min_score=1.01))
    pool.learn(synthetic_tasks[0], progress=False)
    predictions = pool.predict(["the red and the blue", "the dog"])
    assert [(p.task, p.label, p.score) for p in predictions] == [(None, None, 0.0)] * 2


@pytest.fixture
def pool_copy(grown, tmp_path):
    target = tmp_path / "pool"
    shutil.copytree(grown.dir, target)
    return target


def test_load_refuses_another_backbone(pool_copy, tokenizer, make_tiny_model):
    other = Backbone(make_tiny_model(1), tokenizer, "tiny-bert", max_length=32)
    with pytest.raises(PoolFormatError, match="backbone") as error:
        PromptPool.load(pool_copy, other)
    assert "weights_sha256" in str(error.value)
    assert str(pool_copy / MANIFEST) in str(error.value)


def test_load_refuses_another_max_length(pool_copy, tiny_backbone):
    shorter = Backbone(tiny_backbone.model, tiny_backbone.tokenizer, "tiny-bert", max_length=16)
    with pytest.raises(PoolFormatError, match="max_length"):
        PromptPool.load(pool_copy, shorter)


def test_load_refuses_corrupt_manifest_json(pool_copy, tiny_backbone):
    (pool_copy / MANIFEST).write_text('{"format": "continual-pool", "tasks": [')
    with pytest.raises(PoolFormatError, match="not valid JSON"):
        PromptPool.load(pool_copy, tiny_backbone)


def test_load_refuses_a_flipped_byte_in_a_task_file(pool_copy, tiny_backbone):
    manifest = json.loads((pool_copy / MANIFEST).read_text())
    path = pool_copy / manifest["tasks"][1]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) - 3] ^= 0x01  # a bit in the tensor data, not the header
    path.write_bytes(bytes(data))
    with pytest.raises(PoolFormatError, match="checksum") as error:
        PromptPool.load(pool_copy, tiny_backbone)
    assert path.name in str(error.value)


def test_load_refuses_a_missing_task_file(pool_copy, tiny_backbone):
    manifest = json.loads((pool_copy / MANIFEST).read_text())
    path = pool_copy / manifest["tasks"][0]["file"]
    path.unlink()
    with pytest.raises(PoolFormatError, match="missing") as error:
        PromptPool.load(pool_copy, tiny_backbone)
    assert path.name in str(error.value)


def test_load_refuses_an_unknown_format_version(pool_copy, tiny_backbone):
    manifest = json.loads((pool_copy / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (pool_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PoolFormatError, match="format_version"):
        PromptPool.load(pool_copy, tiny_backbone)


def test_load_refuses_a_directory_without_a_manifest(tmp_path, tiny_backbone):
    with pytest.raises(PoolFormatError, match="no such pool"):
        PromptPool.load(tmp_path / "absent", tiny_backbone)
    with pytest.raises(PoolFormatError, match="not a pool"):
        PromptPool.load(tmp_path, tiny_backbone)


def test_oracle_pool_predicts_with_task_names_only(tiny_pool_factory, synthetic_tasks):
    pool = tiny_pool_factory(selector="oracle")
    pool.learn(synthetic_tasks[0], progress=False)
    assert pool.predict(["the red and the blue"], tasks="colours")[0].task == "colours"
    with pytest.raises(ContinualError, match="does not route"):
        pool.predict(["the red and the blue"])


# -- the real MiniLM on real text ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tasks():
    from continual.bench.corpora import load_corpus

    # BBC has 5 topics and the reviews 2 labels: about 40 training and 40 test texts each.
    bbc = load_corpus("bbc", train_per_label=8, test_per_label=8, validation_per_label=0, seed=0)
    reviews = load_corpus(
        "reviews", train_per_label=20, test_per_label=20, validation_per_label=0, seed=0
    )
    return bbc, reviews


@pytest.fixture(scope="module")
def real_pool(minilm, real_tasks):
    pool = PromptPool(
        minilm, prompt_length=4, selector=PrototypeSelector(), training=TrainingConfig(epochs=1)
    )
    for task in real_tasks:
        pool.learn(task, progress=False)
    return pool


def test_real_minilm_routes_news_and_reviews(real_pool, real_tasks):
    for task in real_tasks:
        assert len(task.test) >= 40
        result = real_pool.evaluate(task)
        assert result.examples == len(task.test)
        assert result.routing_accuracy >= 95.0, result


def test_real_minilm_save_load_round_trip(real_pool, real_tasks, minilm, tmp_path):
    real_pool.save(tmp_path / "pool")
    loaded = PromptPool.load(tmp_path / "pool", minilm)
    texts = [text for task in real_tasks for text, _ in task.test[:6]]
    before, after = real_pool.predict(texts), loaded.predict(texts)
    assert [(p.task, p.label, p.score) for p in after] == [
        (p.task, p.label, p.score) for p in before
    ]
    manifest = json.loads((tmp_path / "pool" / MANIFEST).read_text())
    assert manifest["backbone"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["backbone"]["max_length"] == 64


def test_save_is_refused_while_another_writer_holds_the_lock(grown, tmp_path):
    from continual import PoolLockedError
    from continual.pool_lock import PoolLock

    target = tmp_path / "pool"
    shutil.copytree(grown.dir, target)
    manifest = (target / MANIFEST).read_bytes()
    with PoolLock(target):  # another writer (a separate open file: flock conflicts)
        with pytest.raises(PoolLockedError, match="another process"):
            grown.pool.save(target)
        grown.pool.save(target, lock=False)  # the holder itself may save
    assert (target / MANIFEST).read_bytes() == manifest
    grown.pool.save(target)  # free again
