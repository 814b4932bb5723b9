"""The Avalanche integration: converters and PromptPoolStrategy inside Avalanche."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import (
    accuracy_metrics,
    forgetting_metrics,
    loss_metrics,
    timing_metrics,
)
from avalanche.training.plugins import EarlyStoppingPlugin, EvaluationPlugin, LRSchedulerPlugin
from avalanche_data import avalanche_dataset, generic_benchmark
from torch.optim.lr_scheduler import StepLR

import continual
from continual import Backbone, PromptPool, TrainingConfig
from continual.integrations.avalanche import (
    FLOOR_LOG_PROB,
    INFO_ATTRIBUTE,
    PromptPoolStrategy,
    attention_mask,
    benchmark_to_tasks,
    decode_ids,
    encode_texts,
    experience_tensors,
    tasks_to_benchmark,
)
from continual.integrations.avalanche.strategy import CHECKPOINT_FILE


def test_converters_round_trip(avalanche_backbone: Backbone, avalanche_tasks: list) -> None:
    tasks = avalanche_tasks
    benchmark = tasks_to_benchmark(tasks, avalanche_backbone)
    tokenizer = avalanche_backbone.tokenizer
    # One experience per task, task label i, global class ids in sequence order.
    assert len(benchmark.train_stream) == len(benchmark.test_stream) == 2
    assert len(benchmark.valid_stream) == 2
    first, second = benchmark.train_stream
    assert first.task_labels == [0] and second.task_labels == [1]
    assert sorted(first.classes_in_this_experience) == [0, 1]
    assert sorted(second.classes_in_this_experience) == [2, 3, 4]
    ids, targets = experience_tensors(second)
    assert ids.shape == (len(tasks[1].train), avalanche_backbone.max_length)
    assert ids.dtype == torch.long
    # The mask is derivable from the ids; the padding is the tokenizer's pad id.
    expected = tokenizer(
        [t for t, _ in tasks[1].train],
        padding="max_length",
        truncation=True,
        max_length=avalanche_backbone.max_length,
        return_tensors="pt",
    )
    assert torch.equal(ids, expected["input_ids"])
    assert torch.equal(attention_mask(ids, tokenizer.pad_token_id), expected["attention_mask"])
    labels = tasks[1].labels  # ['meh', 'yuck', 'yum'] -> 2, 3, 4
    assert targets.tolist() == [2 + labels.index(label) for _, label in tasks[1].train]

    back = benchmark_to_tasks(benchmark, tokenizer)
    for original, recovered in zip(tasks, back):
        assert recovered.name == original.name
        assert recovered.labels == original.labels
        for split in ("train", "test", "validation"):
            assert getattr(recovered, split) == [
                (text.lower(), label) for text, label in getattr(original, split)
            ]
    # Decoding then tokenizing again gives back the very same ids.
    assert torch.equal(encode_texts(tokenizer, decode_ids(ids, tokenizer), ids.shape[1]), ids)

    # Names given win; with no names at all, labels are the class ids.
    named = benchmark_to_tasks(benchmark, tokenizer, label_names=[f"c{i}" for i in range(5)])
    assert named[1].labels == ["c2", "c3", "c4"]
    delattr(benchmark, INFO_ATTRIBUTE)
    plain = benchmark_to_tasks(benchmark, tokenizer)
    assert [task.name for task in plain] == ["experience_0", "experience_1"]
    assert plain[1].labels == ["2", "3", "4"]
    assert sorted({label for _, label in plain[0].train}) == ["0", "1"]


def _pool(backbone: Backbone, **kwargs) -> PromptPool:
    return PromptPool(
        backbone,
        prompt_length=2,
        selector=kwargs.pop("selector", "prototypes"),
        training=TrainingConfig(epochs=3, batch_size=8, patience=0),
        **kwargs,
    )


def test_generic_benchmark_with_plugins(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    benchmark = generic_benchmark(avalanche_backbone, avalanche_tasks)
    assert not hasattr(benchmark.train_stream[1], "classes_in_this_experience")
    pool = _pool(avalanche_backbone)
    evaluator = EvaluationPlugin(
        accuracy_metrics(minibatch=True, epoch=True, experience=True, stream=True),
        loss_metrics(minibatch=True, epoch=True, experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        timing_metrics(epoch=True, experience=True),
        loggers=[],
    )
    stopper = EarlyStoppingPlugin(
        patience=1, val_stream_name="valid_stream", metric_name="Top1_Acc_Stream", mode="max"
    )
    strategy = PromptPoolStrategy(
        pool=pool,
        train_mb_size=4,
        train_epochs=4,
        eval_mb_size=8,
        device="cpu",
        lr=0.05,
        evaluator=evaluator,
        eval_every=1,
        plugins=[stopper],
        validation=benchmark.valid_stream,
    )
    scheduler = LRSchedulerPlugin(StepLR(strategy.optimizer, step_size=1, gamma=0.5))
    strategy.plugins.append(scheduler)
    lrs: list[float] = []
    seen_parameters: list[int] = []

    class Watch(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            lrs.append(strategy.optimizer.param_groups[0]["lr"])
            params = {id(p) for group in strategy.optimizer.param_groups for p in group["params"]}
            seen_parameters.append(len(params & {id(p) for p in strategy.model.parameters()}))

    strategy.plugins.append(Watch())
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[benchmark.valid_stream])
        strategy.eval(benchmark.test_stream)

    assert pool.tasks == ["experience_0", "experience_1"]
    assert strategy.class_ids == [[0, 1], [2, 3, 4]]
    # The LR scheduler acted on the optimizer that trains the new prompt and head.
    assert lrs[:2] == [0.05, 0.025]
    assert all(count == 3 for count in seen_parameters)  # prompt, head weight, head bias
    # Early stopping evaluated the validation stream every epoch and kept a best state.
    assert stopper.best_val is not None and stopper.best_state is not None
    assert set(stopper.best_state) == {
        "candidate.prompt.vectors",
        "candidate.head.weight",
        "candidate.head.bias",
    }
    history = evaluator.get_all_metrics()
    assert any(name.startswith("Top1_Acc_Stream/eval_phase/valid_stream") for name in history)
    # Train-phase metrics exist.
    for prefix in (
        "Top1_Acc_Epoch/train_phase",
        "Loss_Epoch/train_phase",
        "Loss_MB/train_phase",
        "Time_Epoch/train_phase",
    ):
        assert any(name.startswith(prefix) for name in history), prefix
    last = evaluator.get_last_metrics()
    loss = next(v for k, v in last.items() if k.startswith("Loss_Stream/eval_phase/test_stream"))
    # Finite and sane: between 0 and the misrouting cost (every input misrouted).
    assert 0.0 < loss <= -FLOOR_LOG_PROB + 1e-3
    assert math.isfinite(last["StreamForgetting/eval_phase/test_stream"])
    for entry in pool.entries:
        assert entry.stats["epochs_run"] >= 1
        assert entry.stats["validation_accuracy"] is not None


def test_task_labels_route_and_eval_every_zero(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    from continual.selector import PrototypeSelector

    accuracies = {}
    for labelled in (True, False):
        benchmark = generic_benchmark(avalanche_backbone, avalanche_tasks, task_labels=labelled)
        # min_score 2 refuses every input the selector routes: only task labels route.
        pool = _pool(avalanche_backbone, selector=PrototypeSelector(min_score=2.0))
        evaluator = EvaluationPlugin(
            accuracy_metrics(stream=True), loss_metrics(stream=True), loggers=[]
        )
        strategy = PromptPoolStrategy(pool=pool, evaluator=evaluator, eval_every=0, validation=None)
        for experience in benchmark.train_stream:
            strategy.train(experience)  # initial eval with an empty pool: no failure
        results = strategy.eval(benchmark.test_stream)
        accuracies[labelled] = next(
            v for k, v in results.items() if k.startswith("Top1_Acc_Stream")
        )
        loss = next(v for k, v in results.items() if k.startswith("Loss_Stream"))
        assert 0.0 < loss <= -FLOOR_LOG_PROB + 1e-3
    assert accuracies[False] == 0.0  # all refused: no task labels to route by
    assert accuracies[True] > 0.0

    # The oracle selector works when the scenario gives task labels.
    from continual.selector import OracleSelector

    benchmark = generic_benchmark(avalanche_backbone, avalanche_tasks)
    oracle = PromptPoolStrategy(
        pool=_pool(avalanche_backbone, selector=OracleSelector()),
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
        validation=None,
    )
    oracle.train(benchmark.train_stream)
    results = oracle.eval(benchmark.test_stream)
    assert next(v for k, v in results.items() if k.startswith("Top1_Acc_Stream")) > 0.0


def test_one_class_experiences_and_checkpoint(
    avalanche_backbone: Backbone, avalanche_tasks: list, tmp_path
) -> None:
    # Class-incremental split: one class per experience, task label 0 everywhere.
    benchmark = tasks_to_benchmark(avalanche_tasks, avalanche_backbone, task_labels=False)
    ids, targets = experience_tensors(benchmark.train_stream[1])
    test_ids, test_targets = experience_tensors(benchmark.test_stream[1])
    classes = targets.unique().tolist()
    split = benchmark_from_datasets(
        train=[avalanche_dataset(ids[targets == c], targets[targets == c], 0) for c in classes],
        test=[
            avalanche_dataset(test_ids[test_targets == c], test_targets[test_targets == c], 0)
            for c in classes
        ],
    )
    pool = _pool(avalanche_backbone)
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy = PromptPoolStrategy(pool=pool, evaluator=evaluator)
        strategy.train(split.train_stream)
    assert any("no validation stream" in str(w.message) for w in caught)
    assert strategy.class_ids == [[2], [3], [4]]
    assert [entry.labels for entry in pool.entries] == [
        ["2", "not 2"],
        ["3", "not 3"],
        ["4", "not 4"],
    ]
    results = strategy.eval(split.test_stream)
    assert 0.0 <= next(v for k, v in results.items() if k.startswith("Top1_Acc_Stream")) <= 1.0

    # A checkpoint holds the pool and counters, not the backbone; it reloads without class ids.
    folder = strategy.save_checkpoint(tmp_path / "ckpt")
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert size < 100_000
    back = PromptPoolStrategy.load_checkpoint(
        folder,
        avalanche_backbone,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    assert back.class_ids == strategy.class_ids
    assert back.clock.train_exp_counter == 3
    again = back.eval(split.test_stream)
    assert again == pytest.approx(results)
    with pytest.raises(continual.ContinualError, match="class ids"):
        PromptPoolStrategy(pool=_stripped(pool))
    # A damaged counters file is refused, naming it, rather than half-read.
    (folder / CHECKPOINT_FILE).write_text('{"clock": {"total_iterations": -1}}')
    with pytest.raises(continual.PoolFormatError, match=r"avalanche_strategy\.json.*'clock'"):
        PromptPoolStrategy.load_checkpoint(folder, avalanche_backbone)


def _stripped(pool: PromptPool) -> PromptPool:
    """A copy of ``pool`` whose entries carry no Avalanche class ids."""
    import dataclasses

    copy = PromptPool(
        pool.backbone,
        prompt_length=pool.prompt_length,
        selector=pool.selector,
        training=pool.training,
    )
    for entry in pool.entries:
        copy.add(dataclasses.replace(entry, stats={}))
    return copy


def test_the_default_selector_routes_inside_avalanche(
    avalanche_backbone: Backbone, avalanche_tasks: list
) -> None:
    """The pool's default selector (two layers, first-sentence views) fits and routes on
    Avalanche's token ids the way PromptPool.learn fits it on texts."""
    benchmark = generic_benchmark(avalanche_backbone, avalanche_tasks, task_labels=False)
    pool = PromptPool(
        avalanche_backbone,
        prompt_length=2,
        training=TrainingConfig(epochs=1, batch_size=8, patience=0),
    )
    assert pool.selector.name == "gaussian_views"
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True))
    strategy = PromptPoolStrategy(pool=pool, train_mb_size=8, evaluator=evaluator, validation=None)
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
    hidden = avalanche_backbone.hidden_size
    assert all(entry.selector_state["mean"].shape == (2 * hidden,) for entry in pool.entries)
    strategy.eval(benchmark.test_stream)
    metrics = evaluator.get_last_metrics()
    accuracy = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream/eval_phase"))
    assert 0.0 <= accuracy <= 1.0


def test_a_pool_with_deep_prompts_is_refused_with_a_clear_error(
    avalanche_backbone: Backbone,
) -> None:
    pool = PromptPool(avalanche_backbone, prompt_length=4, placement="query_layer")
    with pytest.raises(continual.ContinualError, match="placement is 'query_layer'"):
        PromptPoolStrategy(pool=pool)
