"""A first pool: two tasks from the shipped example files, routed
predictions, save and load.

Run from the repository root: ``python examples/first_pool.py`` (about a
minute on 2 CPU cores).
"""

from pathlib import Path

from continual import Backbone, PromptPool, Task

data = Path(__file__).parent / "data"
# The packaged all-MiniLM-L6-v2, frozen; 16 prompt vectors per task.
pool = PromptPool(Backbone.load(), prompt_length=16)
# Each task adds a prompt, a head and routing statistics;
# learning "reviews" leaves "tickets" bit-identical.
pool.learn(Task.from_files("tickets", data / "tickets.csv"))
pool.learn(Task.from_files("reviews", data / "reviews.jsonl"))
texts = ["I was billed twice this month", "The soup was cold and bland"]
for p in pool.predict(texts):
    print(p.task, p.label)  # routed with no task id given
pool.save("pools/first")  # safetensors + a JSON manifest, atomically
print(PromptPool.load("pools/first").tasks)
