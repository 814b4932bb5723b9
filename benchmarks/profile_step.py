"""Where one train step's time goes: torch.profiler tables for ours and PEFT's step.

The batch and set-ups are those of `benchmarks/perf.py` (32 BBC texts padded to 64 tokens,
prompt length 16, the packaged MiniLM, query layer 3, 2 threads). Prints, per step, the
operators by self CPU time: ours with the prompt at the input, ours with a deep prompt from
the query layer (from saved lower-layer states, as `train_task` runs it, and through every
layer), and PEFT prompt tuning in train mode (as its examples train: dropout on) and in eval
mode (dropout off).

    python benchmarks/profile_step.py [--rows 12]
"""

from __future__ import annotations

import argparse
import sys

import perf  # the sibling script (run as benchmarks/profile_step.py): same set-ups
import torch
from torch.profiler import ProfilerActivity, profile


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()

    from continual.backbone import Backbone
    from continual.bench.sequences import load_sequence
    from continual.classifier import train_step
    from continual.prompt import LowerStates

    torch.set_num_threads(2)
    backbone = Backbone.load(max_length=perf.MAX_LENGTH, query_layer=perf.QUERY_LAYER)
    bbc = load_sequence("text4", train_per_label=16, test_per_label=1, validation_per_label=1)[0]
    rows = bbc.train[: perf.BATCH]
    texts = [text for text, _ in rows]
    padded = backbone.tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=perf.MAX_LENGTH,
        return_tensors="pt",
    )
    ids, mask = padded["input_ids"], padded["attention_mask"]
    targets = torch.tensor([bbc.label_index(label) for _, label in rows])
    classes = len(bbc.labels)
    steps = {}
    for placement in perf.PLACEMENTS:
        prompt, head, optimizer = perf.our_trainer(backbone, classes, placement)
        saved = LowerStates.build(backbone, prompt, texts, perf.BATCH)
        lower = None if saved is None else saved.batch(texts, mask)
        steps[f"ours_{placement}"] = lambda p=prompt, h=head, o=optimizer, lo=lower: train_step(
            backbone, p, h, o, ids, mask, targets, lower=lo
        )
    prompt, head, optimizer = perf.our_trainer(backbone, classes, "query_layer")
    steps["ours_query_layer_all_layers"] = lambda: train_step(
        backbone, prompt, head, optimizer, ids, mask, targets
    )
    model = perf.peft_model(classes)
    peft_optimizer = torch.optim.Adam(p for p in model.parameters() if p.requires_grad)

    def peft_step(train: bool) -> None:
        model.train(train)
        loss = model(input_ids=ids, attention_mask=mask, labels=targets).loss
        peft_optimizer.zero_grad()
        loss.backward()
        peft_optimizer.step()

    steps["peft_train_mode"] = lambda: peft_step(True)
    steps["peft_eval_mode"] = lambda: peft_step(False)
    for step in steps.values():  # warm-up (and the optimizers' state)
        step()
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            step()
        print(f"===== {name}")
        print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
