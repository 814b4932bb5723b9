"""Last-token vs mean pooling of a decoder LM on text4: frozen-feature probe and routing.

    PYTHONPATH=. python benchmarks/pooling_decoders.py PATH/SmolLM2-135M-Instruct.Q4_1.gguf

Per task, a logistic probe on last-layer features (task given); routing by the default
Gaussian selector on the query layer's features. One forward pass per text serves both poolings.
Result (last line of output): results/pooling/smollm2.json.
"""

import json
import sys
import time

import torch
from sklearn.linear_model import LogisticRegression

from continual import Backbone
from continual.bench.sequences import load_sequence
from continual.pooling import last_pool, mean_pool
from continual.selector import build_selector

torch.set_num_threads(2)
start = time.time()
backbone = Backbone.load(sys.argv[1], max_length=64)
tasks = load_sequence(
    "text4", seed=0, train_per_label=16, test_per_label=16, validation_per_label=0
)
layers = {"query": backbone.query_layer, "last_layer": backbone.num_layers}


def features(texts):
    out = {f"{p}@{k}": [] for p in ("mean", "last") for k in layers}
    for at in range(0, len(texts), 32):
        batch = backbone.tokenize(texts[at : at + 32])
        with torch.no_grad():
            hidden = backbone.model(
                **batch, output_hidden_states=True, use_cache=False
            ).hidden_states
        for key, layer in layers.items():
            states = hidden[layer].float()
            out[f"mean@{key}"].append(mean_pool(states, batch["attention_mask"]))
            out[f"last@{key}"].append(last_pool(states, batch["attention_mask"]))
    return {key: torch.cat(value) for key, value in out.items()}


splits = {
    t.name: (features([x for x, _ in t.train]), features([x for x, _ in t.test])) for t in tasks
}
results = {}
for pooling in ("mean", "last"):
    probe = []
    for task in tasks:
        train, test = splits[task.name]
        key = f"{pooling}@last_layer"
        classifier = LogisticRegression(max_iter=2000)
        classifier.fit(train[key].numpy(), [y for _, y in task.train])
        probe.append(100 * classifier.score(test[key].numpy(), [y for _, y in task.test]))
    selector = build_selector("gaussian")
    states: list = []
    key = f"{pooling}@query"
    for task in tasks:
        states.append(selector.fit_task(splits[task.name][0][key], states, seed=0))
    routed = []
    for index, task in enumerate(tasks):
        chosen, _ = selector.route(splits[task.name][1][key], states)
        routed.append(100 * (chosen == index).float().mean().item())
    results[pooling] = {
        "probe_accuracy": round(sum(probe) / len(probe), 1),
        "per_task": [round(a, 1) for a in probe],
        "routing_accuracy": round(sum(routed) / len(routed), 1),
        "per_task_routing": [round(r, 1) for r in routed],
    }
print(f"{time.time() - start:.0f} s", file=sys.stderr)
print(
    json.dumps(
        {
            "query_layer": backbone.query_layer,
            "sizes": "16 train / 16 test per label",
            "results": results,
        }
    )
)
