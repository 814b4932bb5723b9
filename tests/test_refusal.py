"""Calibrated refusal: ``predict(refuse=share)`` refuses inputs unlike every learned task.

Each entry records, when it is added, how its own held-out inputs match its selector state
alone (`PromptPool.calibration`); refusal compares a routed input with that record.
"""

from __future__ import annotations

import pytest
import torch

from continual import PoolFormatError, PromptPool, Task, TaskDataError, TaskEntry
from continual.prompt import SoftPrompt
from continual.routing import CALIBRATION_LEVELS


def untrained(pool: PromptPool, task: Task) -> TaskEntry:
    """An entry with a fresh prompt and a zero head: refusal is a routing decision."""
    prompt = SoftPrompt.initialise(pool.backbone, pool.prompt_length, "vocab")
    return TaskEntry(
        name=task.name,
        labels=list(task.labels),
        prompt=prompt.vectors.detach(),
        head_weight=torch.zeros(len(task.labels), pool.backbone.hidden_size),
        head_bias=torch.zeros(len(task.labels)),
    )


def test_calibration_is_recorded_from_the_validation_split(tiny_backbone, synthetic_tasks):
    colours, _ = synthetic_tasks
    pool = PromptPool(tiny_backbone, prompt_length=4, selector="gaussian")
    entry = pool.add_trained(colours, untrained(pool, colours))
    calibration = entry.stats["calibration"]
    assert calibration["source"] == "validation"
    assert calibration["examples"] == len(colours.validation)
    scores = calibration["scores"]
    assert len(scores) == len(CALIBRATION_LEVELS)
    assert scores == sorted(scores)  # quantiles rise with the share


def test_refuse_outside_its_range_or_without_calibration_is_refused(tiny_backbone, synthetic_tasks):
    colours, animals = synthetic_tasks
    pool = PromptPool(tiny_backbone, prompt_length=4, selector="gaussian")
    pool.add_trained(colours, untrained(pool, colours))
    for bad in (0.0, 0.5, True, "5%"):
        with pytest.raises(TaskDataError, match="refuse"):
            pool.predict(["the red and the blue"], refuse=bad)  # type: ignore[arg-type]
    pool.add(_with_state(pool, animals))
    with pytest.raises(TaskDataError, match="'animals' has no routing calibration"):
        pool.predict(["a dog"], refuse=0.05)


def _with_state(pool: PromptPool, task: Task) -> TaskEntry:
    """An entry with a selector state but no calibration, as an older version saved it."""
    entry = untrained(pool, task)
    queries = pool.backbone.query([text for text, _ in task.train])
    entry.selector_state = pool.selector.fit_task(queries, [])
    return entry


def test_real_minilm_refuses_an_unseen_task_and_keeps_the_known_one(minilm):
    from continual.bench.corpora import load_corpus

    bbc = load_corpus("bbc", train_per_label=30, test_per_label=10, validation_per_label=10)
    reviews = load_corpus("reviews", train_per_label=30, test_per_label=25, validation_per_label=5)
    pool = PromptPool(minilm, prompt_length=4)  # the default selector
    pool.add_trained(bbc, untrained(pool, bbc))
    known = [text for text, _ in bbc.test]
    unseen = [text for text, _ in reviews.test]
    answers = pool.predict(known + unseen, refuse=0.2)
    known_refused = sum(p.task is None for p in answers[: len(known)]) / len(known)
    unseen_refused = sum(p.task is None for p in answers[len(known) :]) / len(unseen)
    print(f"known refused {known_refused:.2f}, unseen refused {unseen_refused:.2f}")
    # The asked share of news is refused (about), and far more of the movie reviews; not all of
    # them: one-line reviews look like news first sentences, which the news statistics cover.
    assert known_refused <= 0.35, known_refused
    assert unseen_refused >= known_refused + 0.3, (known_refused, unseen_refused)
    # route() refuses the very same inputs, without the prompted pass.
    routed, _ = pool.route(known + unseen, refuse=0.2)
    assert (routed == -1).tolist() == [p.task is None for p in answers]
    # Without refuse, every input goes to the one task there is.
    assert all(p.task == "bbc" for p in pool.predict(unseen))


def test_rows_whose_task_is_given_are_never_refused(tiny_backbone, synthetic_tasks):
    colours, animals = synthetic_tasks
    pool = PromptPool(tiny_backbone, prompt_length=4, selector="gaussian")
    pool.add_trained(colours, untrained(pool, colours))
    pool.add_trained(animals, untrained(pool, animals))
    texts = ["the red and the blue", "a dog", "quarterly earnings beat forecasts"] * 2
    names = ["colours", "animals", "colours", None, None, None]
    answers = pool.predict(texts, tasks=names, refuse=0.2, min_score=None)
    assert [p.task for p in answers[:3]] == names[:3]
    routed, _ = pool.route(texts[3:], refuse=0.2)
    assert [p.task is None for p in answers[3:]] == (routed == -1).tolist()


def test_a_damaged_calibration_is_refused_on_load(tiny_backbone, synthetic_tasks, tmp_path):
    import json

    colours, _ = synthetic_tasks
    pool = PromptPool(tiny_backbone, prompt_length=4, selector="gaussian")
    pool.add_trained(colours, untrained(pool, colours))
    pool.save(tmp_path / "pool")
    path = tmp_path / "pool" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tasks"][0]["stats"]["calibration"]["scores"] = [1.0, 2.0]
    path.write_text(json.dumps(manifest))
    with pytest.raises(PoolFormatError, match=r"'colours'.*stats\.calibration"):
        PromptPool.load(tmp_path / "pool", tiny_backbone)


def test_an_oracle_pool_says_it_does_not_route(tiny_backbone, synthetic_tasks):
    colours, _ = synthetic_tasks
    pool = PromptPool(tiny_backbone, prompt_length=4, selector="oracle")
    pool.add_trained(colours, untrained(pool, colours))
    with pytest.raises(TaskDataError, match="oracle selector does not route"):
        pool.refusal_thresholds(0.05)
