"""A first pool: two tasks from the shipped example files, routed predictions, save and load.

Run from the repository root: ``python examples/first_pool.py`` (about a minute on 2 cores).
"""

from pathlib import Path

from continual import Backbone, PromptPool, Task

data = Path(__file__).parent / "data"
pool = PromptPool(Backbone.load(), prompt_length=16)  # the packaged all-MiniLM-L6-v2, frozen
pool.learn(Task.from_files("tickets", data / "tickets.csv"))  # a prompt, a head, statistics
pool.learn(Task.from_files("reviews", data / "reviews.jsonl"))  # "tickets" stays bit-identical
for p in pool.predict(["I was billed twice this month", "The soup was cold and bland"]):
    print(p.task, p.label)  # routed with no task id given
pool.save("pools/first")  # safetensors + a JSON manifest, written atomically
print(PromptPool.load("pools/first").tasks)
