"""A growing pool: saving, reloading and routing do work in proportion to what changed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import count_task_file_reads

from continual import PromptPool, TrainingConfig
from continual.manage import import_task, remove_task
from continual.storage import MANIFEST


@pytest.fixture(scope="module")
def saved(tiny_backbone, synthetic_tasks, tmp_path_factory):
    """A saved pool of four tasks (two learned, two imported copies), and an export file."""
    pool = PromptPool(tiny_backbone, prompt_length=4, training=TrainingConfig(epochs=1))
    for task in synthetic_tasks:
        pool.learn(task, seed=0, progress=False)
    exported = pool.export_task("colours", tmp_path_factory.mktemp("export") / "c.safetensors")
    pool.import_task(exported, name="colours-2")
    pool.import_task(exported, name="colours-3")
    folder = tmp_path_factory.mktemp("pool")
    pool.save(folder)
    return folder, exported


def files_of(folder):
    return {
        path.relative_to(folder): (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


@pytest.fixture
def copy(saved, tiny_backbone, tmp_path):
    folder = tmp_path / "pool"
    PromptPool.load(saved[0], tiny_backbone).save(folder)
    return folder


def test_saving_after_adding_one_task_writes_its_file_and_the_manifest_only(
    copy, tiny_backbone, synthetic_tasks
):
    pool = PromptPool.load(copy, tiny_backbone)
    pool.learn(dataclasses.replace(synthetic_tasks[0], name="fresh"), seed=1, progress=False)
    before = files_of(copy)
    pool.save(copy)
    after = files_of(copy)
    changed = {name for name in after if before.get(name) != after[name]} - {Path(".lock")}
    new_file = json.loads((copy / MANIFEST).read_text())["tasks"][-1]["file"]
    assert changed == {Path(MANIFEST), Path(new_file)}
    assert set(before) - set(after) == set()
    assert PromptPool.load(copy, tiny_backbone).tasks == pool.tasks


def test_a_task_file_deleted_behind_the_pools_back_is_written_again(copy, tiny_backbone):
    pool = PromptPool.load(copy, tiny_backbone)
    record = json.loads((copy / MANIFEST).read_text())["tasks"][0]
    (copy / record["file"]).unlink()
    pool.save(copy)
    assert PromptPool.load(copy, tiny_backbone).tasks == pool.tasks


def test_reload_reads_only_added_tasks_and_drops_removed_ones(
    copy, saved, tiny_backbone, monkeypatch
):
    pool = PromptPool.load(copy, tiny_backbone)
    texts = ["red and green", "a cat and a dog", "blue sky"]
    pool.predict(texts)  # the selector now holds pooled statistics of four tasks
    import_task(copy, saved[1], name="colours-4")  # as another process would
    remove_task(copy, "colours-2")
    reads = count_task_file_reads(monkeypatch)
    reloaded = pool.reload(copy)
    assert len(reads) == 1  # the added task's file alone
    assert reloaded.tasks == ["colours", "animals", "colours-3", "colours-4"]
    kept = {entry.name: entry for entry in pool.entries}
    for entry in reloaded.entries[:3]:
        assert entry is kept[entry.name]  # not read again
    assert pool.tasks == ["colours", "animals", "colours-2", "colours-3"]  # the old pool stays
    monkeypatch.undo()
    fresh = PromptPool.load(copy, tiny_backbone)
    assert torch.allclose(reloaded.task_scores(texts), fresh.task_scores(texts), atol=1e-4)
    assert [p.label for p in reloaded.predict(texts)] == [p.label for p in fresh.predict(texts)]


def test_load_builds_the_pooled_statistics_and_reload_updates_them(
    copy, saved, tiny_backbone, monkeypatch
):
    import continual.gaussian_selector as gaussian

    summed: list[int] = []
    original = gaussian.summed_scatter

    def counted(states, **options):
        summed.append(len(states))
        return original(states, **options)

    monkeypatch.setattr(gaussian, "summed_scatter", counted)
    pool = PromptPool.load(copy, tiny_backbone)
    assert summed == [4]  # at load: the first routed batch costs what the next ones do
    pool.predict(["red and green"])
    assert summed == [4]
    import_task(copy, saved[1], name="colours-4")
    remove_task(copy, "colours-2")
    reloaded = pool.reload(copy)
    assert summed == [4, 1, 1]  # the added task's factors added, the removed one's subtracted
    reloaded.predict(["red and green"])
    assert summed == [4, 1, 1]


def test_reload_of_a_folder_with_other_settings_loads_it_whole(copy, tiny_backbone, monkeypatch):
    pool = PromptPool.load(copy, tiny_backbone)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["selector"]["shrinkage"] = 0.5
    (copy / MANIFEST).write_text(json.dumps(manifest))
    reads = count_task_file_reads(monkeypatch)
    reloaded = pool.reload(copy)
    assert len(reads) == len(pool.tasks)
    assert reloaded.selector.config()["shrinkage"] == 0.5


def test_a_pool_saved_with_dense_covariances_still_loads_and_routes_as_before(
    copy, tiny_backbone, synthetic_tasks
):
    """Pools saved before the low-rank statistics hold 'selector.covariance' and no 'rank'."""
    dense = PromptPool(
        tiny_backbone,
        prompt_length=4,
        selector={"name": "gaussian_views", "shrinkage": 0.3, "rank": None},
        training=TrainingConfig(epochs=1),
    )
    colours, animals = synthetic_tasks
    dense.learn(colours, seed=0, progress=False)
    dense.learn(animals, seed=0, progress=False)
    folder = copy.parent / "dense"
    dense.save(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["selector"]["rank"]  # as written before the setting existed
    (folder / MANIFEST).write_text(json.dumps(manifest))
    texts = [text for text, _ in colours.test + animals.test]

    loaded = PromptPool.load(folder, tiny_backbone)
    assert set(loaded.entries[0].selector_state) == {"mean", "covariance"}
    assert torch.allclose(loaded.task_scores(texts), dense.task_scores(texts))
    # A task added now gets the low-rank statistics beside the old ones, and routes.
    renamed = dataclasses.replace(colours, name="colours-again")
    loaded.learn(renamed, seed=0, progress=False)
    assert "basis" in loaded.entries[-1].selector_state
    assert loaded.task_scores(texts).shape == (len(texts), 3)


def test_a_pool_saved_with_float16_directions_still_loads_and_routes_alike(
    copy, tiny_backbone, synthetic_tasks
):
    pool = PromptPool.load(copy, tiny_backbone)
    texts = [text for task in synthetic_tasks for text, _ in task.test]
    scores = pool.task_scores(texts)
    for entry in pool.entries:  # unit float16 rows, as written before int8 directions
        state = entry.selector_state
        norms = state["basis"].float().norm(dim=1)
        state["variances"] = (state["variances"] * norms**2).contiguous()
        state["basis"] = (state["basis"].float() / norms[:, None]).half().contiguous()
    pool.save(copy.parent / "float16")
    loaded = PromptPool.load(copy.parent / "float16", tiny_backbone)
    assert loaded.entries[0].selector_state["basis"].dtype == torch.float16
    assert torch.allclose(loaded.task_scores(texts), scores, rtol=1e-3, atol=1e-2)
