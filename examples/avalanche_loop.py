"""The pool as an Avalanche strategy, in Avalanche's own train/eval loop.

Two experiences (the shipped example tasks), class-incremental: no task label is given at
evaluation, the pool's selector routes every input. Run: ``python examples/avalanche_loop.py``.
Needs Avalanche (``pip install -e '.[avalanche]'`` where that extra exists).
"""

from pathlib import Path

from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin

from continual import Backbone, PromptPool, Task, TrainingConfig
from continual.integrations.avalanche import PromptPoolStrategy, tasks_to_benchmark

data = Path(__file__).parent / "data"
backbone = Backbone.load(max_length=32)
tasks = [
    Task.from_files("tickets", data / "tickets.csv"),
    Task.from_files("reviews", data / "reviews.jsonl"),
]
# One experience per task (with a valid_stream); task label 0 everywhere: class-incremental.
benchmark = tasks_to_benchmark(tasks, backbone, task_labels=False)
evaluator = EvaluationPlugin(
    accuracy_metrics(experience=True, stream=True),
    forgetting_metrics(experience=True, stream=True),
    loggers=[],
)
pool = PromptPool(backbone, prompt_length=8, training=TrainingConfig(epochs=3))
strategy = PromptPoolStrategy(pool=pool, train_mb_size=16, evaluator=evaluator)
for experience in benchmark.train_stream:
    strategy.train(experience, eval_streams=[])  # adds one prompt, head and selector state
    strategy.eval(benchmark.test_stream)  # routed by the selector, no task labels
metrics = evaluator.get_last_metrics()
print(f"accuracy {metrics['Top1_Acc_Stream/eval_phase/test_stream/Task000']:.2f}")
print(f"forgetting {metrics['StreamForgetting/eval_phase/test_stream']:.2f}")
strategy.save_checkpoint("pools/avalanche")  # safetensors + class ids; no backbone, no pickle
