"""The pool as an Avalanche strategy, in Avalanche's own train/eval loop.

Two experiences (the shipped example tasks), class-incremental: no task
label is given at evaluation, the pool's selector routes every input.
Run: ``python examples/avalanche_loop.py`` (needs the ``avalanche`` extra).
"""

from pathlib import Path

from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin

from continual import Backbone, PromptPool, Task, TrainingConfig
from continual.integrations.avalanche import (
    PromptPoolStrategy,
    tasks_to_benchmark,
)

data = Path(__file__).parent / "data"
backbone = Backbone.load(max_length=32)
tasks = [
    Task.from_files("tickets", data / "tickets.csv"),
    Task.from_files("reviews", data / "reviews.jsonl"),
]
# One experience per task (and a valid_stream); task label 0 everywhere:
# class-incremental.
benchmark = tasks_to_benchmark(tasks, backbone, task_labels=False)
evaluator = EvaluationPlugin(
    accuracy_metrics(experience=True, stream=True),
    forgetting_metrics(experience=True, stream=True),
    loggers=[],
)
pool = PromptPool(backbone, prompt_length=8, training=TrainingConfig(epochs=3))
strategy = PromptPoolStrategy(pool=pool, train_mb_size=16, evaluator=evaluator)
for experience in benchmark.train_stream:
    # Adds one prompt, head and selector state to the pool.
    strategy.train(experience, eval_streams=[])
    # Routed by the selector: no task labels.
    strategy.eval(benchmark.test_stream)
metrics = evaluator.get_last_metrics()
accuracy = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
print(f"accuracy {accuracy:.2f}")
print(f"forgetting {metrics['StreamForgetting/eval_phase/test_stream']:.2f}")
# Safetensors and class ids: no backbone, nothing pickled.
strategy.save_checkpoint("pools/avalanche")
