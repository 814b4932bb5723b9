"""Cost of one training step and one prediction batch: prompt tuning against full fine-tuning.

Times each kind of step on the same batch of real texts, interleaved (so machine noise hits
all alike), and reports medians and ratios measured in this one run, plus trainable parameters
and the bytes a new task adds. Routed prediction is also timed end to end through
`PromptPool.predict` (4 tasks, query cache off) under the layer-3 ``gaussian`` selector and the
default ``gaussian_views`` one (layers 3 + 6), with the bytes each stores per task.

    python benchmarks/step_cost.py --repeats 15 --out results/step_cost.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from continual.backbone import Backbone
from continual.bench.corpora import load_corpus
from continual.data import Task
from continual.entry import TaskEntry
from continual.files import atomic_write_bytes
from continual.placement import prompted_features
from continual.pool import PromptPool
from continual.prompt import SoftPrompt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("results/step_cost.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = Backbone.load(max_length=args.max_length)
    task = load_corpus(
        "bbc", train_per_label=args.batch_size, test_per_label=1, validation_per_label=0
    )
    texts = [text for text, _ in task.train[: args.batch_size]]
    targets = torch.tensor([task.label_index(label) for _, label in task.train[: args.batch_size]])
    batch = backbone.tokenize(texts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    classes, hidden = len(task.labels), backbone.hidden_size

    prompt = SoftPrompt.initialise(backbone, args.prompt_length, "vocab")
    prompt_head = nn.Linear(hidden, classes)
    prompt_optimizer = torch.optim.Adam([*prompt.parameters(), *prompt_head.parameters()])
    encoder = copy.deepcopy(backbone.model).train()
    for parameter in encoder.parameters():
        parameter.requires_grad_(True)
    finetune_head = nn.Linear(hidden, classes)
    finetune_optimizer = torch.optim.AdamW([*encoder.parameters(), *finetune_head.parameters()])

    def prompt_step() -> None:
        features = prompted_features(backbone, prompt(len(texts)), ids, mask)
        loss = F.cross_entropy(prompt_head(features), targets)
        prompt_optimizer.zero_grad()
        loss.backward()
        prompt_optimizer.step()

    def finetune_step() -> None:
        hidden_states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        features = (hidden_states * weights).sum(1) / weights.sum(1)
        loss = F.cross_entropy(finetune_head(features), targets)
        finetune_optimizer.zero_grad()
        loss.backward()
        finetune_optimizer.step()

    @torch.no_grad()
    def routed_prediction() -> None:
        # The layer-3 query pass plus the prompted pass (the default selector queries all
        # layers: its cost is the PromptPool.predict rows below).
        backbone.query_ids(ids, mask)
        prompted_features(backbone, prompt(len(texts)), ids, mask)

    @torch.no_grad()
    def plain_prediction() -> None:
        backbone.model(input_ids=ids, attention_mask=mask)

    # Two pools of 4 tasks (quarters of the BBC texts) that differ only in their selector; the
    # query cache is off so that every call routes from scratch.
    uncached = Backbone(
        backbone.model,
        backbone.tokenizer,
        backbone.name,
        max_length=args.max_length,
        query_layer=backbone.query_layer,
        query_cache_size=0,
    )
    pools = {}
    for selector in ("gaussian", "gaussian_views"):
        pool = PromptPool(uncached, prompt_length=args.prompt_length, selector=selector)
        for number in range(4):
            quarter = task.train[number::4]
            part = Task(f"part-{number}", train=quarter, labels=task.labels)
            entry = TaskEntry(
                part.name,
                part.labels,
                prompt.vectors.detach().clone(),
                prompt_head.weight.detach().clone(),
                prompt_head.bias.detach().clone(),
            )
            pool.add_trained(part, entry)
        pools[selector] = pool

    def pool_predict(selector: str):
        return lambda: pools[selector].predict(texts, batch_size=args.batch_size)

    steps = {
        "prompt-tuning step": prompt_step,
        "full fine-tuning step": finetune_step,
        "pool prediction batch (query + prompted pass)": routed_prediction,
        "plain forward pass": plain_prediction,
        "PromptPool.predict, gaussian selector (layer 3)": pool_predict("gaussian"),
        "PromptPool.predict, gaussian_views selector (layers 3 + 6)": pool_predict(
            "gaussian_views"
        ),
    }
    for step in steps.values():  # warm-up
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    trainable = {
        "prompt-tuning": prompt.vectors.numel() + sum(p.numel() for p in prompt_head.parameters()),
        "full fine-tuning": sum(p.numel() for p in encoder.parameters())
        + sum(p.numel() for p in finetune_head.parameters()),
    }
    result = {
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "prompt_length": args.prompt_length,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
        "median_seconds": {name: round(value, 4) for name, value in medians.items()},
        "ratios": {
            "fine-tuning step / prompt-tuning step": round(
                medians["full fine-tuning step"] / medians["prompt-tuning step"], 2
            ),
            "pool prediction / plain forward": round(
                medians["pool prediction batch (query + prompted pass)"]
                / medians["plain forward pass"],
                2,
            ),
            "routed prediction: gaussian_views / gaussian": round(
                medians["PromptPool.predict, gaussian_views selector (layers 3 + 6)"]
                / medians["PromptPool.predict, gaussian selector (layer 3)"],
                3,
            ),
        },
        "selector_bytes_per_task": {name: pool.bytes_per_task()[0] for name, pool in pools.items()},
        "trainable_parameters": trainable,
        "float32_bytes_trained_per_task": {name: 4 * count for name, count in trainable.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
