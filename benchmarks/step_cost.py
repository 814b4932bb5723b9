"""Cost of one training step and one prediction batch: prompt tuning against full fine-tuning.

Times each kind of step on the same batch of real texts, interleaved (so machine noise hits
all alike), and reports medians and ratios measured in this one run, plus trainable parameters
and the bytes a new task adds.

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
from continual.prompt import SoftPrompt, prompted_features
from continual.storage import atomic_write_bytes


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
    task = load_corpus("bbc", train_per_label=args.batch_size, test_per_label=1,
                       validation_per_label=0)
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
        # What PromptPool.predict costs per batch: the query pass plus the prompted pass.
        backbone.query_ids(ids, mask)
        prompted_features(backbone, prompt(len(texts)), ids, mask)

    @torch.no_grad()
    def plain_prediction() -> None:
        backbone.model(input_ids=ids, attention_mask=mask)

    steps = {"prompt-tuning step": prompt_step, "full fine-tuning step": finetune_step,
             "pool prediction batch (query + prompted pass)": routed_prediction,
             "plain forward pass": plain_prediction}
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
        "settings": {"batch_size": args.batch_size, "max_length": args.max_length,
                     "prompt_length": args.prompt_length, "repeats": args.repeats,
                     "threads": torch.get_num_threads()},
        "median_seconds": {name: round(value, 4) for name, value in medians.items()},
        "ratios": {
            "fine-tuning step / prompt-tuning step":
                round(medians["full fine-tuning step"] / medians["prompt-tuning step"], 2),
            "pool prediction / plain forward":
                round(medians["pool prediction batch (query + prompted pass)"]
                      / medians["plain forward pass"], 2),
        },
        "trainable_parameters": trainable,
        "float32_bytes_trained_per_task": {name: 4 * count for name, count in trainable.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
