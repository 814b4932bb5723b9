"""The prompt pool against Avalanche's Naive, Replay, EWC and LwF, through one Avalanche loop.

Every method is an Avalanche strategy and runs the same loop on the same benchmark::

    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
        strategy.eval(benchmark.test_stream)

with one ``EvaluationPlugin(accuracy_metrics, forgetting_metrics)``; the table reports its final
StreamAccuracy (test examples pooled) and StreamForgetting, and the wall time of the loop.

Scenarios, all on a subset of text4 (bbc, reviews, debates, conventions; ``--train-per-label``
training, ``--test-per-label`` test and ``--validation-per-label`` validation examples per label,
inputs truncated to ``--max-length`` tokens):

* ``task-incremental``: one experience per corpus, task label = experience index. The pool
  routes by task label; the baselines use Avalanche's ``MultiHeadClassifier`` (a head per task).
* ``class-incremental``: one experience per corpus, task label 0. The pool routes with its
  selector; the baselines use one ``IncrementalClassifier`` head over all classes.
* ``class-split``: one class per experience (the 13 classes of the four corpora in sequence),
  task label 0: the pool's one-class entries (the selector decides the class); the baselines
  as in class-incremental.

The baselines fine-tune a copy of the whole MiniLM encoder (``--baseline-epochs`` epochs,
AdamW 5e-5, head 1e-2); the pool trains a prompt and head per experience (``--epochs``).

    python benchmarks/avalanche_table.py --out results/avalanche_table.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

METHODS = ("pool", "naive", "replay", "ewc", "lwf")
SCENARIOS = ("task-incremental", "class-incremental", "class-split")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--train-per-label", type=int, default=8)
    parser.add_argument("--test-per-label", type=int, default=10)
    parser.add_argument("--validation-per-label", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="pool epochs per experience")
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--baseline-epochs", type=int, default=1)
    parser.add_argument("--mem-size", type=int, default=40, help="Replay buffer (examples)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def class_split(benchmark):
    """One experience per class, task label 0, from a benchmark's train/test/valid streams."""
    import torch
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.utils import DataAttribute, make_avalanche_dataset
    from torch.utils.data import TensorDataset

    from continual.integrations.avalanche import experience_tensors

    def dataset(ids, targets):
        return make_avalanche_dataset(
            TensorDataset(ids, targets),
            data_attributes=[
                DataAttribute(targets, "targets"),
                DataAttribute(
                    torch.zeros_like(targets), "targets_task_labels", use_in_getitem=True
                ),
            ],
        )

    streams = {}
    for name in ("train", "test", "valid"):
        per_class = []
        for experience in getattr(benchmark, f"{name}_stream"):
            ids, targets = experience_tensors(experience)
            for c in targets.unique().tolist():
                per_class.append(dataset(ids[targets == c], targets[targets == c]))
        streams[name] = per_class
    # The baselines' IncrementalClassifier needs the timeline; the pool builds its own.
    return with_classes_timeline(benchmark_from_datasets(**streams))


def baseline(name: str, backbone, args, multihead: bool, evaluator, device: str = "cpu"):
    import torch
    from avalanche.models import MultiHeadClassifier, MultiTaskModule
    from avalanche.training import EWC, LwF, Naive, Replay
    from torch import nn

    from continual.bench.avalanche_baselines import EncoderClassifier
    from continual.integrations.avalanche import pad_token_id

    encoder = copy.deepcopy(backbone.model)
    for parameter in encoder.parameters():
        parameter.requires_grad_(True)
    torch.manual_seed(args.seed)
    single = EncoderClassifier(encoder, backbone.hidden_size, pad_token_id(backbone.tokenizer))
    model: nn.Module = single
    if multihead:

        class MultiHead(MultiTaskModule):
            def __init__(self) -> None:
                super().__init__()
                self.body = single
                self.classifier = MultiHeadClassifier(backbone.hidden_size)

            def forward_single_task(self, x, task_label):
                return self.classifier(self.body.features(x), task_label)

        model = MultiHead()
        head_params = list(model.classifier.parameters())
    else:
        head_params = list(single.classifier.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": list(encoder.parameters()), "lr": 5e-5}, {"params": head_params, "lr": 1e-2}],
        weight_decay=0.0,
    )
    common = dict(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=args.baseline_epochs,
        eval_mb_size=64,
        device=device,
        evaluator=evaluator,
    )
    if name == "naive":
        return Naive(**common)
    if name == "ewc":
        return EWC(ewc_lambda=1000.0, mode="separate", **common)
    if name == "lwf":
        return LwF(alpha=1.0, temperature=2.0, **common)
    return Replay(mem_size=args.mem_size, **common)


def run(method: str, scenario: str, benchmark, backbone, args) -> dict:
    import torch
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
    from avalanche.logging import BaseLogger
    from avalanche.training.plugins import EvaluationPlugin

    from continual import PromptPool, TrainingConfig
    from continual.integrations.avalanche import PromptPoolStrategy

    class NullLogger(BaseLogger):  # logs nothing: the numbers come from get_last_metrics
        pass

    evaluator = EvaluationPlugin(
        accuracy_metrics(stream=True), forgetting_metrics(stream=True), loggers=[NullLogger()]
    )
    if method == "pool":
        pool = PromptPool(
            backbone,
            prompt_length=args.prompt_length,
            selector="gaussian",
            training=TrainingConfig(epochs=args.epochs),
        )
        strategy = PromptPoolStrategy(pool=pool, evaluator=evaluator, seed=args.seed)
    else:
        strategy = baseline(method, backbone, args, scenario == "task-incremental", evaluator)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        for experience in benchmark.train_stream:
            strategy.train(experience, eval_streams=[])
            strategy.eval(benchmark.test_stream)
    seconds = time.perf_counter() - started
    last = evaluator.get_last_metrics()
    accuracy = next(
        v for k, v in last.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")
    )
    forgetting = last.get("StreamForgetting/eval_phase/test_stream", 0.0)
    return {
        "method": method,
        "scenario": scenario,
        "accuracy": float(accuracy),
        "forgetting": float(forgetting),
        "seconds": round(seconds, 1),
        "experiences": len(benchmark.train_stream),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Avalanche's import-time and deprecation warnings
        from continual import Backbone
        from continual.bench.sequences import load_sequence
        from continual.integrations.avalanche import tasks_to_benchmark

        backbone = Backbone.load(max_length=args.max_length)
        tasks = load_sequence(
            "text4",
            seed=args.seed,
            train_per_label=args.train_per_label,
            test_per_label=args.test_per_label,
            validation_per_label=args.validation_per_label,
        )
        rows = []
        for scenario in args.scenarios:
            benchmark = tasks_to_benchmark(
                tasks, backbone, task_labels=scenario == "task-incremental"
            )
            if scenario == "class-split":
                benchmark = class_split(benchmark)
            for method in args.methods:
                try:
                    row = run(method, scenario, benchmark, backbone, args)
                except Exception as error:  # a baseline failing inside Avalanche
                    # is a result to report (e.g. its LwF on one-class experiences), not a crash.
                    row = {
                        "method": method,
                        "scenario": scenario,
                        "error": f"{type(error).__name__}: {error}",
                    }
                    rows.append(row)
                    print(f"{scenario:18s} {method:7s} failed: {row['error']}", flush=True)
                    continue
                rows.append(row)
                print(
                    f"{scenario:18s} {method:7s} acc={row['accuracy']:.3f} "
                    f"forgetting={row['forgetting']:.3f} {row['seconds']:.0f}s",
                    flush=True,
                )
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sequence": [task.name for task in tasks],
        "train_examples": [len(task.train) for task in tasks],
        "test_examples": [len(task.test) for task in tasks],
        "versions": {
            "avalanche-lib": version("avalanche-lib"),
            "torch": version("torch"),
            "python": sys.version.split()[0],
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
