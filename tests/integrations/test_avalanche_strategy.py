"""PromptPoolStrategy on the shared training loop: an entry made through Avalanche is the one
`PromptPool.learn` makes, and each case Avalanche users meet works or is refused clearly."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils import DataAttribute, make_avalanche_dataset
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training.plugins import (
    EarlyStoppingPlugin,
    EvaluationPlugin,
    EWCPlugin,
    LwFPlugin,
    ReplayPlugin,
)
from avalanche_data import generic_benchmark
from conftest import ANIMALS, COLOURS, synthetic_pairs, tiny_llama
from torch import nn

from continual import Backbone, PromptPool, Task, TrainingConfig
from continual.errors import ContinualError, TaskDataError
from continual.integrations.avalanche import (
    PromptPoolStrategy,
    encode_texts,
    tasks_to_benchmark,
)
from continual.integrations.avalanche.strategy import CHECKPOINT_FILE, STATS_KEY


def _config(**changes) -> TrainingConfig:
    return TrainingConfig(**{"epochs": 4, "batch_size": 8, "patience": 1, **changes})


def _evaluator(*metrics) -> EvaluationPlugin:
    return EvaluationPlugin(*(metrics or [accuracy_metrics(stream=True)]), loggers=[])


def _without_clock(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("train_seconds", STATS_KEY)}


def test_an_entry_grown_in_avalanche_is_the_entry_pool_learn_makes(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    benchmark = tasks_to_benchmark(avalanche_tasks, avalanche_backbone, task_labels=False)
    grown = PromptPool(avalanche_backbone, prompt_length=2, training=_config())
    strategy = PromptPoolStrategy(pool=grown, evaluator=_evaluator(), seed=5)
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
    learned = PromptPool(avalanche_backbone, prompt_length=2, training=_config())
    for index, task in enumerate(avalanche_tasks):
        learned.learn(task, seed=5 + index, progress=False)

    assert grown.tasks == learned.tasks
    for ours, theirs in zip(grown.entries, learned.entries):
        assert _without_clock(ours.stats) == _without_clock(theirs.stats)
        assert ours.stats["calibration"]["source"] == "validation"
        assert ours.labels == theirs.labels
        for mine, reference in zip(ours.tensors().values(), theirs.tensors().values()):
            assert torch.equal(mine, reference)
    texts = [text for task in avalanche_tasks for text, _ in task.test] + ["zzz qqq"]
    answers = grown.predict(texts, refuse=0.05)
    assert [a.to_dict() for a in answers] == [
        a.to_dict() for a in learned.predict(texts, refuse=0.05)
    ]


def test_the_epoch_restored_after_early_stopping_plugin_is_the_one_recorded(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    benchmark = tasks_to_benchmark(avalanche_tasks, avalanche_backbone)
    # A margin no accuracy can beat: the first measured epoch stays the best, so the plugin
    # stops after `patience` epochs and loads that epoch's weights.
    stopper = EarlyStoppingPlugin(patience=1, val_stream_name="valid_stream", margin=1.0)
    pool = PromptPool(avalanche_backbone, prompt_length=2, selector="prototypes")
    strategy = PromptPoolStrategy(
        pool=pool,
        lr=0.05,
        train_epochs=5,
        train_mb_size=4,
        plugins=[stopper],
        evaluator=_evaluator(),
        eval_every=1,
        validation=None,
    )
    for experience in benchmark.train_stream:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            strategy.train(experience, eval_streams=[benchmark.valid_stream])
        entry = pool.entries[-1]
        assert entry.stats["epochs_run"] < 5  # the plugin stopped training
        assert entry.stats["best_epoch"] == stopper.best_step
        assert torch.equal(entry.prompt, stopper.best_state["candidate.prompt.vectors"].cpu())
        assert torch.equal(entry.head_weight, stopper.best_state["candidate.head.weight"].cpu())


@pytest.mark.parametrize(
    "plugin", [ReplayPlugin(mem_size=8), EWCPlugin(ewc_lambda=1.0), LwFPlugin()]
)
def test_plugins_that_cannot_apply_to_a_pool_are_refused_with_the_reason(
    avalanche_backbone: Backbone, plugin
) -> None:
    pool = PromptPool(avalanche_backbone, prompt_length=2)
    with pytest.raises(ContinualError, match=f"{type(plugin).__name__} cannot apply") as caught:
        PromptPoolStrategy(pool=pool, plugins=[plugin])
    message = str(caught.value)
    assert "\n" not in message and ("replays" in message or "protects" in message)


def test_a_plugin_appended_after_construction_is_refused_before_training(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    benchmark = tasks_to_benchmark(avalanche_tasks, avalanche_backbone)
    pool = PromptPool(avalanche_backbone, prompt_length=2)
    strategy = PromptPoolStrategy(pool=pool, evaluator=_evaluator(), validation=None)
    strategy.plugins.append(ReplayPlugin(mem_size=8))
    with pytest.raises(ContinualError, match="ReplayPlugin cannot apply"):
        strategy.train(benchmark.train_stream[0], eval_streams=[])
    assert pool.entries == []


def test_positional_and_model_arguments_are_refused(avalanche_backbone: Backbone) -> None:
    pool = PromptPool(avalanche_backbone, prompt_length=2)
    linear = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1)
    with pytest.raises(ContinualError, match=r"no positional arguments.*pool=PromptPool"):
        PromptPoolStrategy(linear, optimizer)
    with pytest.raises(ContinualError, match="takes no model"):
        PromptPoolStrategy(pool=pool, model=linear)
    with pytest.raises(ContinualError, match="needs pool=PromptPool"):
        PromptPoolStrategy(pool=linear)


def test_validation_auto_finds_the_valid_stream_of_a_generic_benchmark(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    benchmark = generic_benchmark(avalanche_backbone, avalanche_tasks)
    pool = PromptPool(avalanche_backbone, prompt_length=2, training=_config())
    strategy = PromptPoolStrategy(pool=pool, evaluator=_evaluator())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for experience in benchmark.train_stream:
            strategy.train(experience, eval_streams=[])
    assert not [w for w in caught if "no validation stream" in str(w.message)]
    assert all(e.stats["validation_accuracy"] is not None for e in pool.entries)
    assert all(e.stats["calibration"]["source"] == "validation" for e in pool.entries)


def test_training_an_experience_again_is_refused(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    benchmark = tasks_to_benchmark(avalanche_tasks, avalanche_backbone)
    pool = PromptPool(avalanche_backbone, prompt_length=2, training=_config(epochs=1))
    strategy = PromptPoolStrategy(pool=pool, evaluator=_evaluator(), validation=None)
    strategy.train(benchmark.train_stream[0], eval_streams=[])
    before = [entry.prompt.clone() for entry in pool.entries]
    with pytest.raises(TaskDataError, match=r"'sport'.*already in the pool.*pool\.remove"):
        strategy.train(benchmark.train_stream[0], eval_streams=[])
    assert pool.tasks == ["sport"] and torch.equal(pool.entries[0].prompt, before[0])


def test_string_tensor_and_text_inputs_and_targets_work(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    """Label-name targets, targets stored as tensors, and batches of texts or of dicts of
    ids train the same entries as class ids over token-id tensors."""
    sport = avalanche_tasks[0]
    tokenizer, width = avalanche_backbone.tokenizer, avalanche_backbone.max_length

    def dataset(split, make_input, make_target):
        texts = [text for text, _ in split]
        ids = encode_texts(tokenizer, texts, width)
        rows = [
            (make_input(text, row), make_target(label), 0)
            for text, row, (_, label) in zip(texts, ids, split)
        ]
        targets = [row[1] for row in rows]
        return make_avalanche_dataset(
            _Rows(rows), data_attributes=[DataAttribute(targets, "targets")]
        )

    index = {"win": 0, "loss": 1}  # label names get class ids in order of first appearance
    kinds = {
        "ids, int": (lambda text, ids: ids, lambda label: index[label]),
        "texts, names": (lambda text, ids: text, lambda label: label),
        "dicts, tensors": (lambda text, ids: {"input_ids": ids}, lambda y: torch.tensor(index[y])),
    }
    prompts = {}
    for kind, (make_input, make_target) in kinds.items():
        benchmark = benchmark_from_datasets(
            train=[dataset(sport.train, make_input, make_target)],
            test=[dataset(sport.test, make_input, make_target)],
            valid=[dataset(sport.validation, make_input, make_target)],
        )
        pool = PromptPool(avalanche_backbone, prompt_length=2, training=_config(epochs=2))
        strategy = PromptPoolStrategy(pool=pool, evaluator=_evaluator(), task_names=["sport"])
        strategy.train(benchmark.train_stream, eval_streams=[])
        results = strategy.eval(benchmark.test_stream)
        accuracy = next(v for k, v in results.items() if k.startswith("Top1_Acc_Stream"))
        assert 0.0 <= accuracy <= 1.0, kind
        if "names" in kind:
            assert pool.entries[0].labels == ["win", "loss"]
        assert pool.entries[0].stats[STATS_KEY]["class_ids"] == [0, 1], kind
        prompts[kind] = pool.entries[0].prompt
    assert torch.equal(prompts["ids, int"], prompts["dicts, tensors"])
    assert torch.equal(prompts["ids, int"], prompts["texts, names"])


def test_inputs_that_are_not_token_ids_or_texts_are_refused_at_the_first_batch(
    avalanche_backbone: Backbone,
) -> None:
    images = torch.rand(6, 3, 4, 4)
    targets = torch.tensor([0, 1] * 3)
    data = make_avalanche_dataset(
        _Rows([(image, int(y), 0) for image, y in zip(images, targets)]),
        data_attributes=[DataAttribute(targets, "targets")],
    )
    benchmark = benchmark_from_datasets(train=[data], test=[data])
    pool = PromptPool(avalanche_backbone, prompt_length=2)
    strategy = PromptPoolStrategy(pool=pool, evaluator=_evaluator(), validation=None)
    with pytest.raises(TaskDataError, match=r"inputs must be token ids.*got Tensor of shape"):
        strategy.train(benchmark.train_stream, eval_streams=[])
    assert pool.entries == []


def test_forgetting_after_a_resumed_checkpoint_equals_an_uninterrupted_run(
    avalanche_backbone: Backbone, tmp_path
) -> None:
    tasks = [
        Task.from_pairs("colours", synthetic_pairs(COLOURS, 12, seed=1), seed=0),
        Task.from_pairs("animals", synthetic_pairs(ANIMALS, 12, seed=2), seed=0),
    ]
    benchmark = tasks_to_benchmark(tasks, avalanche_backbone, task_labels=False)

    def evaluator():
        return _evaluator(accuracy_metrics(experience=True), forgetting_metrics(experience=True))

    def strategy_on():
        training = _config(epochs=2)
        pool = PromptPool(
            avalanche_backbone, prompt_length=2, selector="prototypes", training=training
        )
        return PromptPoolStrategy(pool=pool, evaluator=evaluator())

    whole = strategy_on()
    for experience in benchmark.train_stream:
        whole.train(experience, eval_streams=[])
        expected = whole.eval(benchmark.test_stream)

    first = strategy_on()
    first.train(benchmark.train_stream[0], eval_streams=[])
    first.eval(benchmark.test_stream)
    folder = first.save_checkpoint(tmp_path / "ckpt")
    resumed = PromptPoolStrategy.load_checkpoint(folder, avalanche_backbone, evaluator=evaluator())
    resumed.train(benchmark.train_stream[1], eval_streams=[])
    got = resumed.eval(benchmark.test_stream)

    forgetting = [k for k in expected if k.startswith("ExperienceForgetting")]
    # Experience 0's forgetting, reported after experience 1: the second task's routing key
    # takes some of the first task's inputs.
    assert forgetting and expected[forgetting[0]] > 0
    assert {k: got[k] for k in forgetting} == pytest.approx({k: expected[k] for k in forgetting})
    history = resumed.evaluator.get_all_metrics()
    assert any(len(values[1]) == 2 for name, values in history.items() if "Exp000" in name)


def test_the_checkpoint_file_is_written_atomically(
    avalanche_backbone: Backbone, avalanche_tasks: list, tmp_path, monkeypatch
) -> None:
    benchmark = tasks_to_benchmark(avalanche_tasks, avalanche_backbone)
    pool = PromptPool(avalanche_backbone, prompt_length=2, training=_config(epochs=1))
    strategy = PromptPoolStrategy(pool=pool, evaluator=_evaluator(), validation=None)
    strategy.train(benchmark.train_stream[0], eval_streams=[])
    folder = strategy.save_checkpoint(tmp_path / "ckpt")
    saved = (folder / CHECKPOINT_FILE).read_bytes()
    strategy.train(benchmark.train_stream[1], eval_streams=[])
    replace = os.replace

    def crash_on_the_checkpoint(source, target, **kwargs):
        if str(target).endswith(CHECKPOINT_FILE):
            raise OSError(28, "No space left on device")
        return replace(source, target, **kwargs)

    monkeypatch.setattr(os, "replace", crash_on_the_checkpoint)
    with pytest.raises(OSError, match=r"avalanche_strategy\.json"):
        strategy.save_checkpoint(folder)
    assert (folder / CHECKPOINT_FILE).read_bytes() == saved  # the previous one, whole
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_verbalizer_head_is_trained_as_the_pool_config_says(tokenizer) -> None:
    from continual.verbalizer import verbalizer_weight

    llama = Backbone(
        tiny_llama(tokenizer), copy.deepcopy(tokenizer), "tiny-llama", max_length=16, pooling="last"
    )
    colours = Task(
        "colours",
        train=[("red and orange", "warm"), ("blue and teal", "cool")] * 4,
        test=[("gold", "warm"), ("navy", "cool")],
        validation=[("pink", "warm"), ("cyan", "cool")],
    )
    training = _config(epochs=2, head="verbalizer")
    grown = PromptPool(llama, prompt_length=2, selector="prototypes", training=training)
    strategy = PromptPoolStrategy(pool=grown, evaluator=_evaluator())
    strategy.train(tasks_to_benchmark([colours], llama).train_stream, eval_streams=[])
    entry = grown.entries[0]
    assert torch.equal(entry.head_weight, verbalizer_weight(llama, entry.labels))
    assert entry.stats["head"] == "verbalizer"
    assert entry.stats["trainable_parameters"] == entry.prompt.numel()
    learned = PromptPool(llama, prompt_length=2, selector="prototypes", training=training)
    reference = learned.learn(colours, progress=False)
    assert _without_clock(entry.stats) == _without_clock(reference.stats)
    assert torch.equal(entry.prompt, reference.prompt)


# -- helpers ---------------------------------------------------------------------------------


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.rows[index]
