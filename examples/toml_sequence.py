"""A task sequence from a TOML file: learn it in order, score every task
after each one.

Row i of the accuracy matrix holds every task's test accuracy after
learning task i; forgetting is how far each earlier task fell from its
best. Run: ``python examples/toml_sequence.py`` (on Python 3.10, with the
``bench`` extra). The same file runs every benchmark method:
``continual run --sequence examples/data/sequence.toml``.
"""

from math import nan
from pathlib import Path

from continual import Backbone, PromptPool
from continual.bench.sequences import load_sequence
from continual.metrics import average_accuracy, forgetting

tasks = load_sequence(Path(__file__).parent / "data" / "sequence.toml")
pool = PromptPool(Backbone.load(max_length=64), prompt_length=16)
matrix = []
for task in tasks:
    pool.learn(task)
    # Tasks not learned yet are NaN: the metrics read the lower triangle.
    matrix.append(
        [
            pool.evaluate(t).accuracy if t.name in pool.tasks else nan
            for t in tasks
        ]
    )
    print(task.name, matrix[-1])
print(
    f"average accuracy {average_accuracy(matrix):.1f}%, "
    f"forgetting {forgetting(matrix):.1f}"
)
