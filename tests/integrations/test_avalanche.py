"""The Avalanche integration: converters and PromptPoolStrategy inside Avalanche."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin

import continual
from continual import Backbone, PromptPool, TrainingConfig
from continual.integrations.avalanche import (
    INFO_ATTRIBUTE,
    PromptPoolStrategy,
    attention_mask,
    benchmark_to_tasks,
    decode_ids,
    encode_texts,
    experience_tensors,
    tasks_to_benchmark,
)
from continual.metrics import avalanche_forgetting, backward_transfer


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
    expected = tokenizer([t for t, _ in tasks[1].train], padding="max_length", truncation=True,
                         max_length=avalanche_backbone.max_length, return_tensors="pt")
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


@pytest.mark.slow
def test_prompt_pool_strategy_matches_avalanche_metrics() -> None:
    from continual.bench.corpora import load_corpus

    backbone = Backbone.load(max_length=48)
    tasks = [load_corpus(name, train_per_label=16, test_per_label=16, validation_per_label=4)
             for name in ("bbc", "reviews")]
    benchmark = tasks_to_benchmark(tasks, backbone)
    pool = PromptPool(backbone, prompt_length=4, training=TrainingConfig(epochs=1))
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        loggers=[],
    )
    strategy = PromptPoolStrategy(pool=pool, evaluator=evaluator, progress=False)

    count = len(tasks)
    R = np.full((count, count), np.nan)  # R[i][j]: accuracy (fraction) on task j after task i
    snapshots = []
    for i, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)
        for j in range(i + 1):
            # Our own evaluation, through the pool on the original texts.
            R[i, j] = pool.evaluate(tasks[j]).accuracy / 100
        snapshots.append([{k: v.clone() for k, v in entry.tensors().items()}
                          for entry in pool.entries])
    assert pool.tasks == ["bbc", "reviews"]
    assert strategy.class_ids == [[0, 1, 2, 3, 4], [5, 6]]
    assert pool.entries[0].labels == tasks[0].labels

    last = evaluator.get_last_metrics()
    history = evaluator.get_all_metrics()
    # (c) Avalanche's accuracy on each experience, after each experience, is the pool's.
    for j in range(count):
        values = history[f"Top1_Acc_Exp/eval_phase/test_stream/Task{j:03d}/Exp{j:03d}"][1]
        assert len(values) == count  # one per eval
        for i in range(j, count):
            assert values[i] == pytest.approx(R[i, j], abs=1e-9), (i, j)
    # Before task j is learned nothing can route to it: Avalanche sees accuracy 0 there.
    assert history["Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"][1][0] == 0.0

    # (a) Sign conventions. BWT = mean over j < T of R[T][j] - R[j][j] (negative = forgotten),
    # which is Avalanche's StreamBWT. Avalanche's forgetting per task is R[j][j] - R[T][j]
    # (its accuracy right after training j minus the last one), so StreamForgetting = -BWT =
    # continual.metrics.avalanche_forgetting. (Chaudhry's forgetting uses the max over earlier
    # rows instead of R[j][j]; with two tasks they coincide, in general they do not.)
    assert last["StreamForgetting/eval_phase/test_stream"] == pytest.approx(
        avalanche_forgetting(R), abs=1e-6)
    assert last["StreamBWT/eval_phase/test_stream"] == pytest.approx(
        backward_transfer(R), abs=1e-6)
    assert last["ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(
        R[0, 0] - R[1, 0], abs=1e-6)
    assert last["ExperienceBWT/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(
        R[1, 0] - R[0, 0], abs=1e-6)

    # (b) The first entry is bit-identical after the second experience.
    for name, tensor in snapshots[0][0].items():
        assert torch.equal(pool.entries[0].tensors()[name], tensor), name

    # The prompt trained through Avalanche is the one the pool trains on the original task.
    own = PromptPool(backbone, prompt_length=4, training=TrainingConfig(epochs=1))
    own.learn(tasks[1], progress=False)
    assert torch.equal(own.entries[0].prompt, pool.entries[1].prompt)
    assert torch.equal(own.entries[0].head_weight, pool.entries[1].head_weight)


def test_prompt_pool_strategy_refusals_and_oracle(avalanche_backbone: Backbone, avalanche_tasks: list) -> None:
    from continual.selector import OracleSelector, PrototypeSelector

    tasks = avalanche_tasks
    benchmark = tasks_to_benchmark(tasks, avalanche_backbone, task_labels=False)
    assert [e.task_labels for e in benchmark.train_stream] == [[0], [0]]
    with pytest.raises(continual.ContinualError, match="oracle"):
        PromptPoolStrategy(pool=PromptPool(avalanche_backbone, prompt_length=2,
                                           selector=OracleSelector()))
    # A cosine similarity never reaches 2: every input is refused, so nothing is right, as in
    # pool.evaluate; the refused inputs score the extra last column, which no class id uses.
    pool = PromptPool(avalanche_backbone, prompt_length=2, selector=PrototypeSelector(min_score=2.0),
                      training=TrainingConfig(epochs=1))
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy = PromptPoolStrategy(pool=pool, evaluator=evaluator, progress=False,
                                  task_names=["a", "b"], label_names=list("vwxyz"))
    strategy.train(benchmark.train_stream)  # a whole stream in one call
    assert pool.tasks == ["a", "b"] and pool.entries[1].labels == ["x", "y", "z"]
    results = strategy.eval(benchmark.test_stream)
    assert all(value == 0.0 for name, value in results.items() if name.startswith("Top1_Acc_Exp"))
    renamed = [(text, pool.entries[0].labels[tasks[0].labels.index(label)])
               for text, label in tasks[0].test]  # labels as the benchmark named them
    assert pool.evaluate("a", renamed).accuracy == 0.0
    ids, _ = experience_tensors(benchmark.test_stream[0])
    logits = strategy.model(ids)
    assert logits.shape == (len(ids), 5 + 1)
    assert (logits.argmax(1) == 5).all()
