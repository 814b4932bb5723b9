"""Where the time goes: our prompt pool against PEFT prompt tuning and full fine-tuning.

On the packaged MiniLM (max_length 64, query layer 3), 2 threads, real texts. In one run:

1. one train step (forward, backward, optimizer step) on the identical padded batch (32 BBC
   texts padded to 64 tokens, prompt length 16): ours (`continual.classifier.train_step`, set up
   as `train_task` does, for both placements, with the frozen weights in float32 and in
   bfloat16), PEFT ``PromptTuningConfig(SEQ_CLS, 16 virtual tokens)`` with Adam, and full
   fine-tuning with AdamW;
2. end to end: BBC trained until its test accuracy first reaches a common target (90%, or the
   lower of the tools' best accuracies), ours with `train_task`, PEFT with the plain PyTorch
   loop of its prompt-tuning examples (dynamic padding, AdamW at 3e-2, linear schedule);
3. routed inference of a batch of 32 texts mixing the four text4 tasks through
   `PromptPool.predict` (4 tasks), against PEFT's single-task prompted forward, a plain
   forward and the per-task loop (4 PEFT adapters, each run over the whole batch);
4. serving: `predict` with 1, 4, 16 and 64 tasks in the pool;
5. peak resident memory of each (`continual.bench.memory.PeakMemory`).

Timed steps are interleaved (one of each per round) so that machine load hits all alike, and
medians are reported. Training runs of step 2 cannot be interleaved; they run one after the
other and the load average is recorded.

With ``--generation``, text generation instead (`generation_benchmark`), on SmolLM2-135M from
its pinned wheel (or ``--backbone``), one thread: the pool writing a batch of 16 gen3 inputs
with one task's prompt, against PEFT's prompt-tuned model with the same prompt writing the same
tokens for the same inputs, and the pool writing the same batch with four tasks' prompts mixed.

    python benchmarks/perf.py [--quick] [--out results/perf]
    python benchmarks/perf.py --generation [--quick] [--out results/perf-generation]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

RATIO_KEYS = (
    "train_step_ratio_vs_peft",
    "end_to_end_ratio_vs_peft",
    "routed_vs_prompted_forward",
    "speedup_vs_per_task_loop",
    "serving_64_vs_1_tasks",
)
PLACEMENTS = ("input", "query_layer")
SERVING_SIZES = (1, 4, 16, 64)
PROMPT_LENGTH = 16
BATCH = 32
MAX_LENGTH = 64
QUERY_LAYER = 3
TARGET_ACCURACY = 90.0
# PEFT's prompt-tuning guide trains the soft prompt with AdamW at 3e-2 and a linear schedule.
PEFT_LR = 3e-2


# -- pure helpers (tested without timing anything) ------------------------------------------------
def median_ms(seconds: Sequence[float]) -> float:
    """Median of durations in seconds, in milliseconds, rounded to 0.1 ms."""
    return round(1000 * statistics.median(seconds), 1)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 3 places; None when either is missing or 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def interleaved(
    steps: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median milliseconds of each step, run one of each per round so load hits all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = clock()
            step()
            seconds[name].append(clock() - start)
    return {name: median_ms(values) for name, values in seconds.items()}


def common_target(curves: dict[str, list[tuple[float, ...]]], cap: float) -> float:
    """The accuracy every tool must reach: ``cap``, or the lowest best accuracy if below it.

    ``curves`` maps a tool to its (wall seconds, test accuracy %, CPU seconds) after each
    epoch (the CPU seconds may be missing).
    """
    bests = [max(entry[1] for entry in curve) for curve in curves.values() if curve]
    return min([cap, *bests])


def time_to(curve: Sequence[tuple[float, ...]], target: float, column: int = 0) -> float | None:
    """Seconds (``column`` 0: wall, 2: CPU) at the first epoch whose accuracy reaches
    ``target`` (None if none does)."""
    for entry in curve:
        if entry[1] >= target - 1e-9:
            return entry[column]
    return None


def assemble(
    medians: dict[str, float],
    end_to_end: dict[str, Any],
    memory: dict[str, float],
    default_placement: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The result document: top-level ratios (ours = the pool's default placement), the same
    for both placements under explicit keys, and the raw medians in ms."""
    seconds = end_to_end["seconds_to_target"]
    result: dict[str, Any] = {}
    for placement in PLACEMENTS:
        result[f"train_step_ratio_vs_peft_{placement}"] = ratio(
            medians[f"train_step.ours_{placement}"], medians["train_step.peft"]
        )
        result[f"train_step_ratio_vs_peft_{placement}_bfloat16"] = ratio(
            medians[f"train_step.ours_{placement}_bfloat16"], medians["train_step.peft"]
        )
        result[f"end_to_end_ratio_vs_peft_{placement}"] = ratio(
            seconds.get(f"ours_{placement}"), seconds.get("peft")
        )
        cpu = end_to_end.get("cpu_seconds_to_target", {})
        result[f"end_to_end_cpu_ratio_vs_peft_{placement}"] = ratio(
            cpu.get(f"ours_{placement}"), cpu.get("peft")
        )
        routed = medians[f"inference.ours_routed_{placement}"]
        result[f"routed_vs_prompted_forward_{placement}"] = ratio(
            routed, medians["inference.peft_prompted_forward"]
        )
        result[f"routed_vs_plain_forward_{placement}"] = ratio(
            routed, medians["inference.plain_forward"]
        )
        result[f"speedup_vs_per_task_loop_{placement}"] = ratio(
            medians["inference.peft_per_task_loop_4"], routed
        )
        result[f"serving_64_vs_1_tasks_{placement}"] = ratio(
            medians[f"serving.{placement}.64"], medians[f"serving.{placement}.1"]
        )
    for key in (*RATIO_KEYS, "end_to_end_cpu_ratio_vs_peft"):
        result[key] = result[f"{key}_{default_placement}"]
    result["full_finetune_step_vs_peft"] = ratio(
        medians["train_step.full_finetune"], medians["train_step.peft"]
    )
    return {
        **result,
        "default_placement": default_placement,
        "median_ms": medians,
        "end_to_end": end_to_end,
        "peak_memory_mb": memory,
        **meta,
    }


def report_markdown(result: dict[str, Any]) -> str:
    """A Markdown report: the ratios, then every median, then end to end and memory."""

    def shown(value: object) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    lines = [
        "# Performance: prompt pool vs PEFT prompt tuning vs full fine-tuning",
        "",
        f"Command: `{result.get('command', '')}`  ",
        f"Commit {result.get('commit', '?')}; {result.get('threads', '?')} threads; load "
        f"average {result.get('load_average', '?')}; torch {result.get('versions', {}).get('torch', '?')}, "
        f"transformers {result.get('versions', {}).get('transformers', '?')}, "
        f"peft {result.get('versions', {}).get('peft', '?')}. Default placement: "
        f"`{result['default_placement']}`.",
        "",
        "| ratio | default | input | query_layer | target |",
        "|---|---:|---:|---:|---:|",
    ]
    targets = {
        "train_step_ratio_vs_peft": "<= 0.5",
        "end_to_end_ratio_vs_peft": "<= 0.5",
        "routed_vs_prompted_forward": "<= 1.15",
        "speedup_vs_per_task_loop": "",
        "serving_64_vs_1_tasks": "<= 1.2",
    }
    for key in RATIO_KEYS:
        lines.append(
            f"| `{key}` | {shown(result[key])} | {shown(result[f'{key}_input'])} | "
            f"{shown(result[f'{key}_query_layer'])} | {targets[key]} |"
        )
    lines += [
        f"| `routed_vs_plain_forward` | | {shown(result['routed_vs_plain_forward_input'])} | "
        f"{shown(result['routed_vs_plain_forward_query_layer'])} | |",
        f"| `end_to_end_cpu_ratio_vs_peft` | {shown(result.get('end_to_end_cpu_ratio_vs_peft'))} | "
        f"{shown(result.get('end_to_end_cpu_ratio_vs_peft_input'))} | "
        f"{shown(result.get('end_to_end_cpu_ratio_vs_peft_query_layer'))} | |",
        "| `train_step_ratio_vs_peft`, our frozen weights in bfloat16 (PEFT's float32) | | "
        f"{shown(result['train_step_ratio_vs_peft_input_bfloat16'])} | "
        f"{shown(result['train_step_ratio_vs_peft_query_layer_bfloat16'])} | |",
        f"| `full_finetune_step_vs_peft` | {shown(result['full_finetune_step_vs_peft'])} | | | |",
        "",
        "| step | median ms |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {shown(value)} |" for name, value in result["median_ms"].items()]
    e2e = result["end_to_end"]
    lines += [
        "",
        f"End to end (task `{e2e.get('task')}`, target {shown(e2e.get('target'))}% test accuracy):",
        "",
        "| tool | wall seconds to target | CPU seconds to target | epochs to target | best accuracy % |",
        "|---|---:|---:|---:|---:|",
    ]
    for tool, curve in e2e.get("curves", {}).items():
        lines.append(
            f"| {tool} | {shown(e2e['seconds_to_target'].get(tool))} | "
            f"{shown(e2e.get('cpu_seconds_to_target', {}).get(tool))} | "
            f"{shown(e2e['epochs_to_target'].get(tool))} | "
            f"{shown(max((entry[1] for entry in curve), default=None))} |"
        )
    lines += ["", "Peak resident memory above the level before (MB, PeakMemory):", ""]
    lines += ["| work | MB |", "|---|---:|"]
    lines += [f"| {name} | {shown(value)} |" for name, value in result["peak_memory_mb"].items()]
    return "\n".join(lines) + "\n"


def plot_png(result: dict[str, Any]) -> bytes:
    """Three panels: train step, inference (ms) and serving cost against tasks in the pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians = result["median_ms"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for axis, prefix, title in (
        (axes[0], "train_step.", "train step (ms, median)"),
        (axes[1], "inference.", "batch of 32 (ms, median)"),
    ):
        names = [name for name in medians if name.startswith(prefix)]
        axis.barh([name.removeprefix(prefix) for name in names], [medians[n] for n in names])
        axis.set_title(title)
        axis.invert_yaxis()
    for placement in PLACEMENTS:
        sizes = [s for s in SERVING_SIZES if f"serving.{placement}.{s}" in medians]
        axes[2].plot(
            sizes, [medians[f"serving.{placement}.{s}"] for s in sizes], "o-", label=placement
        )
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("tasks in the pool")
    axes[2].set_title("routed batch of 32 via predict (ms)")
    axes[2].set_ylim(bottom=0)
    axes[2].legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


# -- setups -------------------------------------------------------------------------------------
def classifier_model(num_labels: int, seed: int = 0) -> Any:
    """``AutoModelForSequenceClassification`` from the packaged MiniLM folder (new classifier)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from continual.backbone import default_model_path

    torch.manual_seed(seed)  # the classifier draws from the global generator
    hf_logging.set_verbosity_error()  # the untrained classifier's "missing weights" notice
    return AutoModelForSequenceClassification.from_pretrained(
        default_model_path(), num_labels=num_labels
    )


def peft_model(num_labels: int, adapters: int = 1, seed: int = 0) -> Any:
    """PEFT prompt tuning (16 virtual tokens, SEQ_CLS) on the packaged MiniLM folder, with
    ``adapters`` prompt adapters (named ``default``, ``t1``, ...)."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    base = classifier_model(num_labels, seed)
    config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=PROMPT_LENGTH)
    model = get_peft_model(base, config)
    for number in range(1, adapters):
        model.add_adapter(f"t{number}", copy.deepcopy(config))
    return model


def our_trainer(backbone: Any, classes: int, placement: str, seed: int = 0) -> tuple:
    """Prompt, head and optimizer exactly as `train_task` sets them up (default config)."""
    from continual.learner import TrainingConfig
    from continual.prompt import SoftPrompt

    config = TrainingConfig()
    generator = torch.Generator().manual_seed(seed)
    prompt = SoftPrompt.initialise(
        backbone, PROMPT_LENGTH, config.prompt_init, generator=generator, placement=placement
    )
    head = nn.Linear(backbone.hidden_size, classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.Adam(
        [
            {"params": prompt.parameters(), "lr": config.prompt_lr},
            {"params": head.parameters(), "lr": config.head_lr},
        ]
    )
    return prompt, head, optimizer


def versions() -> dict[str, str]:
    import transformers

    import continual

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "continual": continual.__version__,
    }
    try:
        import peft

        found["peft"] = peft.__version__
    except ImportError:
        found["peft"] = "not installed"
    return found


def git_commit() -> str:
    """HEAD's hash, with ``+dirty`` if tracked files differ from it (results must not)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# -- the measurements ---------------------------------------------------------------------------
class _Reached(Exception):
    """Stops a training run once its test accuracy reached the target."""


@torch.inference_mode()
def _our_test_accuracy(backbone: Any, prompt: Any, head: nn.Linear, task: Any) -> float:
    from continual.placement import prompted_features

    correct = 0
    for start in range(0, len(task.test), 64):
        chunk = task.test[start : start + 64]
        batch = backbone.tokenize([text for text, _ in chunk])
        features = prompted_features(
            backbone, prompt(len(chunk)), batch["input_ids"], batch["attention_mask"]
        )
        predicted = head(features).argmax(1).tolist()
        correct += sum(p == task.label_index(label) for p, (_, label) in zip(predicted, chunk))
    return 100.0 * correct / len(task.test)


def our_curve(
    backbone: Any, task: Any, placement: str, epochs: int, stop_at: float
) -> list[tuple[float, float]]:
    """(seconds, test accuracy %) after each epoch of `train_task` (default config but
    ``epochs``, patience 0 so no early stop hides an epoch); test evaluation is off the clock."""
    from continual import learner

    curve: list[tuple[float, float]] = []
    paused = [0.0, 0.0]
    start, cpu_start = time.perf_counter(), time.process_time()

    def test_after_epoch(_epoch: int, prompt: Any, head: nn.Linear) -> None:
        # train_task evaluates validation after every epoch, before this: that stays on the
        # clock (it is part of how our tool trains); the test evaluation here is ours and is not.
        now, cpu_now = time.perf_counter(), time.process_time()
        accuracy = _our_test_accuracy(backbone, prompt, head, task)
        paused[0] += time.perf_counter() - now
        paused[1] += time.process_time() - cpu_now
        curve.append(
            (
                round(now - start - paused[0], 2),
                round(accuracy, 2),
                round(cpu_now - cpu_start - paused[1], 2),
            )
        )
        if accuracy >= stop_at:
            raise _Reached

    config = learner.TrainingConfig(epochs=epochs, patience=0)
    try:
        learner.train_task(
            backbone,
            task,
            PROMPT_LENGTH,
            config,
            seed=0,
            progress=False,
            placement=placement,
            on_epoch=test_after_epoch,
        )
    except _Reached:
        pass
    return curve


def peft_curve(task: Any, epochs: int, stop_at: float) -> list[tuple[float, float]]:
    """(seconds, test accuracy %) after each epoch of PEFT prompt tuning trained the way its
    examples do: DataLoader with dynamic padding, AdamW, linear schedule, model.train(), and an
    evaluation pass on the validation split after each epoch; test evaluation off the clock."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from continual.backbone import default_model_path

    start, cpu_start = time.perf_counter(), time.process_time()
    model = peft_model(len(task.labels))
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())

    def collate(rows: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        batch = tokenizer(
            [text for text, _ in rows],
            padding="longest",
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        batch["labels"] = torch.tensor([task.label_index(label) for _, label in rows])
        return dict(batch)

    generator = torch.Generator().manual_seed(0)
    train = DataLoader(task.train, BATCH, shuffle=True, collate_fn=collate, generator=generator)
    validation = DataLoader(task.validation, BATCH, collate_fn=collate)
    test = DataLoader(task.test, 64, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEFT_LR)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, len(train) * epochs)

    def evaluate(loader: Any) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for batch in loader:
                predicted = model(**batch).logits.argmax(-1)
                correct += int((predicted == batch["labels"]).sum())
                total += len(predicted)
        return 100.0 * correct / max(total, 1)

    curve: list[tuple[float, float]] = []
    paused = cpu_paused = 0.0
    for _ in range(epochs):
        model.train()
        for batch in train:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        evaluate(validation)
        now, cpu_now = time.perf_counter(), time.process_time()
        accuracy = evaluate(test)
        paused += time.perf_counter() - now
        cpu_paused += time.process_time() - cpu_now
        curve.append(
            (
                round(now - start - paused, 2),
                round(accuracy, 2),
                round(cpu_now - cpu_start - cpu_paused, 2),
            )
        )
        if accuracy >= stop_at:
            break
    return curve


# -- generation: the pool against PEFT's prompt-tuned model --------------------------------------
GENERATION_BATCH = 16
GENERATION_TASKS = 4
GENERATION_TOKENS = 12
GENERATION_PROMPT_LENGTH = 8


@torch.no_grad()
def peft_greedy(
    peft: Any, ids: torch.Tensor, mask: torch.Tensor, limit: int, eos: int
) -> list[list[int]]:
    """Greedy tokens from PEFT's prompt-tuned causal LM over left-padded rows: its prompt
    (``get_prompt``) before the input's embeddings, explicit position ids (PEFT's forward drops
    them, which shifts a left-padded row), the base model's KV cache, last-position logits in
    the prefill. Each row stops at ``eos`` (not kept) or after ``limit`` tokens."""
    model = peft.get_base_model()
    rows = len(ids)
    prompts = peft.get_prompt(batch_size=rows).to(model.dtype)  # (B, L, H)
    embeds = torch.cat([prompts, peft.word_embeddings(ids)], dim=1)
    mask = torch.cat([mask.new_ones(rows, prompts.shape[1]), mask], dim=1)
    # Left padding: the prompt sits right before each row's first real token.
    embeds, mask = _left_align(embeds, mask)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    written: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    position = positions[:, -1:]
    for _ in range(limit):
        token = out.logits[:, -1].argmax(-1)
        for row, value in enumerate(token.tolist()):
            if not done[row]:
                done[row] = value == eos
                if not done[row]:
                    written[row].append(value)
                    done[row] = len(written[row]) >= limit
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        position = position + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position,
            cache=out.cache,
            use_cache=True,
        )
    return written


def _left_align(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of [prompt; tokens; padding] moved to [padding; prompt; tokens]."""
    width = mask.shape[1]
    shift = width - mask.sum(1, keepdim=True)
    source = torch.arange(width)[None] - shift
    index = source.clamp(min=0)
    moved = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[2]))
    return moved, (source >= 0).long()


def generation_report(result: dict[str, Any]) -> str:
    """Markdown for the generation timing."""
    medians = result["median_ms"]
    lines = [
        "# Performance: generation with the pool against PEFT prompt tuning",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit {result['commit']}; model `{result['model']}`; {result['threads']} thread; load "
        f"average {result['load_average']} → {result['load_average_end']}; "
        f"{result['repeats']} interleaved rounds after a warm-up; peft "
        f"{result['versions'].get('peft')}, transformers {result['versions'].get('transformers')}.",
        "",
        f"A batch of {result['batch']} gen3 test inputs, greedy, at most {result['max_new_tokens']} "
        f"new tokens, prompts of {result['prompt_length']} vectors drawn from the vocabulary "
        "(timing does not depend on their values; both sides write the same tokens, checked).",
        "",
        "| comparison | ratio | target |",
        "|---|---:|---:|",
        f"| pool (one task) / PEFT ({result['peft_reference']}) | "
        f"{result['pool_vs_peft']} | <= 1.2 |",
        f"| pool, four tasks mixed / pool, one task (per batch) | {result['mixed_vs_single']} | "
        "<= 1.3 |",
        f"| the same per generated token | {result['mixed_vs_single_per_token']} | |",
        "",
        "| step | median ms | tokens generated |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {value:,.1f} | {result['tokens'].get(name, '')} |"
        for name, value in medians.items()
    ]
    lines += [
        "",
        f"Same tokens: pool and PEFT loop agree on {result['same_text_rows']} of "
        f"{result['batch']} rows. `PeftModel.generate` (left padding, greedy) "
        + (
            "gives the same text, and is timed as the reference."
            if result["peft_generate_matches"]
            else "does not give the same text (row "
            f"{result['peft_generate_differs_at']}: {result['peft_generate_example']!r} against "
            f"the pool's {result['pool_example']!r}), so the reference is a greedy loop over PEFT's "
            "prompt-tuned model (`peft_greedy`: its prompt, the base model's KV cache, explicit "
            "position ids)."
        ),
    ]
    return "\n".join(lines) + "\n"


def generation_benchmark(out: Path, quick: bool, backbone_name: str | None, command: str) -> int:
    """Time the pool's generation against PEFT's and a four-task batch against a one-task
    batch (interleaved rounds), and write ``perf.json`` and ``report.md`` into ``out``."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from continual.backbone import Backbone
    from continual.bench.generative_corpora import Sizes, load_generative_sequence
    from continual.bench.packaged_lm import smollm2_gguf
    from continual.data import Generation, Task
    from continual.entry import TaskEntry
    from continual.files import atomic_write_bytes
    from continual.pool import PromptPool
    from continual.prompt import SoftPrompt

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    name = backbone_name or str(smollm2_gguf())
    backbone = Backbone.load(name, max_length=64)
    per_task = GENERATION_BATCH // 2
    tasks = load_generative_sequence("gen3", Sizes(train=per_task, validation=0, test=per_task))
    texts = [text for task in tasks for text, _ in task.test][:GENERATION_BATCH]
    pool = PromptPool(backbone, prompt_length=GENERATION_PROMPT_LENGTH, selector="oracle")
    generator = torch.Generator().manual_seed(0)
    generation = Generation("exact_match", GENERATION_TOKENS, ())
    for number in range(GENERATION_TASKS):
        prompt = SoftPrompt.initialise(
            backbone, GENERATION_PROMPT_LENGTH, "vocab", generator=generator
        ).vectors.detach()
        entry = TaskEntry(
            f"t{number}",
            [],
            prompt,
            prompt.new_zeros(0, backbone.hidden_size),
            prompt.new_zeros(0),
            generation=generation,
        )
        pool.add_trained(Task(f"t{number}", train=tasks[0].train, generation=generation), entry)
    peft = get_peft_model(
        copy.deepcopy(backbone.language_model),
        PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=GENERATION_PROMPT_LENGTH
        ),
    ).eval()
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(pool.entries[0].prompt)
    tokenizer = backbone.tokenizer
    eos = int(tokenizer.eos_token_id)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    left = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    tokenizer.padding_side = side
    right = backbone.tokenize(texts)
    mixed = [f"t{row % GENERATION_TASKS}" for row in range(len(texts))]

    def pool_single() -> list[str]:
        return [p.output or "" for p in pool.predict(texts, tasks="t0", batch_size=len(texts))]

    def pool_mixed() -> list[str]:
        return [p.output or "" for p in pool.predict(texts, tasks=mixed, batch_size=len(texts))]

    def peft_loop() -> list[list[int]]:
        return peft_greedy(
            peft, right["input_ids"], right["attention_mask"], GENERATION_TOKENS, eos
        )

    @torch.no_grad()
    def peft_generate() -> list[list[int]]:
        written = peft.generate(
            input_ids=left["input_ids"],
            attention_mask=left["attention_mask"],
            max_new_tokens=GENERATION_TOKENS,
            do_sample=False,
            pad_token_id=int(tokenizer.pad_token_id),
        )
        return [_until(row.tolist(), eos) for row in written[:, left["input_ids"].shape[1] :]]

    def decoded(rows: list[list[int]]) -> list[str]:
        return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]

    single_text = pool_single()
    loop_text = decoded(peft_loop())
    try:
        generate_text = decoded(peft_generate())
    except Exception as error:  # PEFT's generate path breaks with some transformers versions
        generate_text = [f"error: {type(error).__name__}: {error}"] * len(texts)
    generate_matches = generate_text == single_text
    differs = next((row for row, (a, b) in enumerate(zip(generate_text, single_text)) if a != b), 0)
    steps: dict[str, Callable[[], object]] = {
        "pool_one_task": pool_single,
        "peft_greedy_loop": peft_loop,
        "pool_four_tasks_mixed": pool_mixed,
    }
    if generate_matches:
        steps["peft_generate"] = peft_generate
    repeats = 2 if quick else 5
    medians = interleaved(steps, repeats)
    reference = "peft_generate" if generate_matches else "peft_greedy_loop"

    def token_count(outputs: list[str]) -> int:
        return sum(len(ids) for ids in tokenizer(outputs, add_special_tokens=False)["input_ids"])

    tokens = {
        "pool_one_task": token_count(single_text),
        "peft_greedy_loop": token_count(loop_text),
        "pool_four_tasks_mixed": token_count(pool_mixed()),
    }
    per_token = ratio(
        medians["pool_four_tasks_mixed"] / max(tokens["pool_four_tasks_mixed"], 1),
        medians["pool_one_task"] / max(tokens["pool_one_task"], 1),
    )
    result = {
        "pool_vs_peft": ratio(medians["pool_one_task"], medians[reference]),
        "mixed_vs_single": ratio(medians["pool_four_tasks_mixed"], medians["pool_one_task"]),
        "mixed_vs_single_per_token": per_token,
        "peft_reference": reference,
        "peft_generate_matches": generate_matches,
        "peft_generate_differs_at": differs,
        "peft_generate_example": generate_text[differs],
        "pool_example": single_text[differs],
        "same_text_rows": sum(a == b for a, b in zip(single_text, loop_text, strict=True)),
        "median_ms": medians,
        "tokens": tokens,
        "batch": len(texts),
        "max_new_tokens": GENERATION_TOKENS,
        "prompt_length": GENERATION_PROMPT_LENGTH,
        "repeats": repeats,
        "model": name,
        "command": command,
        "commit": git_commit(),
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in load_before],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "perf.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out / "report.md", generation_report(result).encode())
    print(generation_report(result))
    return 0


def _until(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller task")
    parser.add_argument("--out", type=Path, help="default results/perf (results/perf-generation)")
    parser.add_argument(
        "--generation", action="store_true", help="time text generation (see the docstring)"
    )
    parser.add_argument("--backbone", help="with --generation: a causal LM (default SmolLM2)")
    args = parser.parse_args(argv)
    if args.generation:
        command = "python benchmarks/perf.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
        return generation_benchmark(
            args.out or Path("results/perf-generation"), args.quick, args.backbone, command
        )
    args.out = args.out or Path("results/perf")

    from peft import PeftModel  # noqa: F401  (fail early, with the usual message, without peft)

    from continual.backbone import Backbone
    from continual.bench.memory import PeakMemory
    from continual.bench.sequences import load_sequence
    from continual.classifier import train_step
    from continual.data import Task
    from continual.entry import TaskEntry
    from continual.files import atomic_write_bytes
    from continual.pool import PromptPool
    from continual.prompt import LowerStates, SoftPrompt

    torch.set_num_threads(2)
    started = time.perf_counter()
    load_before = os.getloadavg()
    repeats = 3 if args.quick else 15
    serving_repeats = 2 if args.quick else 9  # 8 pools a round: fewer rounds, same keys
    epochs = 3 if args.quick else 8
    sizes = (
        dict(train_per_label=8, test_per_label=10, validation_per_label=2)
        if args.quick
        else dict(train_per_label=64, test_per_label=50, validation_per_label=16)
    )
    default_placement = PromptPool.__init__.__kwdefaults__["placement"]
    backbone = Backbone.load(max_length=MAX_LENGTH, query_layer=QUERY_LAYER)
    tasks = load_sequence("text4", seed=0, **sizes)
    bbc = tasks[0]
    tokenizer = backbone.tokenizer
    medians: dict[str, float] = {}
    memory: dict[str, float] = {}

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    # 1. Train step on the identical padded batch -----------------------------------------------
    rows = bbc.train[:: max(1, len(bbc.train) // BATCH)][:BATCH]
    padded = tokenizer(
        [text for text, _ in rows],
        padding="max_length",
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )
    ids, mask = padded["input_ids"], padded["attention_mask"]
    targets = torch.tensor([bbc.label_index(label) for _, label in rows])
    classes = len(bbc.labels)
    steps: dict[str, Callable[[], object]] = {}
    # Ours also with the frozen weights in bfloat16 (`Backbone.load(dtype=...)`; prompt, head
    # and optimizer stay float32): text4 accuracy holds (results/text4-bf16).
    half = Backbone.load(max_length=MAX_LENGTH, query_layer=QUERY_LAYER, dtype="bfloat16")
    for suffix, model in (("", backbone), ("_bfloat16", half)):
        for placement in PLACEMENTS:
            prompt, head, optimizer = our_trainer(model, classes, placement)
            # As train_task runs it: a deep prompt's steps start from each text's saved states
            # at the query layer (computed once per task, before the first epoch).
            saved = LowerStates.build(model, prompt, [text for text, _ in rows], BATCH)
            lower = None if saved is None else saved.batch([text for text, _ in rows], mask)

            def ours(model=model, prompt=prompt, head=head, optimizer=optimizer, lower=lower):
                return train_step(model, prompt, head, optimizer, ids, mask, targets, lower=lower)

            steps[f"train_step.ours_{placement}{suffix}"] = ours
    # The deep prompt's step running every layer, as before the states were saved.
    prompt, head, optimizer = our_trainer(backbone, classes, "query_layer")
    steps["train_step.ours_query_layer_all_layers"] = lambda: train_step(
        backbone, prompt, head, optimizer, ids, mask, targets
    )

    def classifier_step(model: Any, optimizer: torch.optim.Optimizer) -> Callable[[], float]:
        """One step of a transformers sequence classifier on the batch, in train mode."""
        model.train()  # as PEFT's examples train (dropout on)

        def step() -> float:
            loss = model(input_ids=ids, attention_mask=mask, labels=targets).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    peft = peft_model(classes)
    steps["train_step.peft"] = classifier_step(
        peft, torch.optim.Adam(p for p in peft.parameters() if p.requires_grad)
    )
    full = classifier_model(classes)  # the same classifier model PEFT wraps, no prompt
    for parameter in full.parameters():
        parameter.requires_grad_(True)
    steps["train_step.full_finetune"] = classifier_step(
        full, torch.optim.AdamW(full.parameters(), lr=2e-5)
    )
    for name, step in steps.items():  # memory first: optimizer state is allocated on step 1
        with PeakMemory() as peak:
            step()
        memory[name] = peak.megabytes
    log("train steps: memory measured, timing")
    medians.update(interleaved(steps, repeats, warmup=0))  # the memory pass warmed them up
    log(f"train steps: {medians}")

    # 3 + 4. Routed inference and serving -------------------------------------------------------
    uncached = Backbone(
        backbone.model,
        backbone.tokenizer,
        backbone.name,
        max_length=MAX_LENGTH,
        query_layer=QUERY_LAYER,
        query_cache_size=0,  # every predict routes from scratch, as for new texts
    )
    mixed = [text for task in tasks for text, _ in task.test[:: max(1, len(task.test) // 8)][:8]]
    generator = torch.Generator().manual_seed(0)

    def pool_of(count: int, placement: str) -> PromptPool:
        """A pool of ``count`` tasks cycling over text4: random prompts and heads (timing
        does not depend on their values), selector states fitted on real texts."""
        pool = PromptPool(backbone, prompt_length=PROMPT_LENGTH, placement=placement)
        for number in range(count):
            source = tasks[number % len(tasks)]
            lap = number // len(tasks)
            laps = -(-count // len(tasks))
            part = source.train[lap::laps] if laps > 1 else source.train
            task = Task(f"{source.name}-{number}", train=part, labels=source.labels)
            prompt = SoftPrompt.initialise(
                backbone, PROMPT_LENGTH, "vocab", generator=generator, placement=placement
            )
            weight = torch.randn(len(task.labels), backbone.hidden_size, generator=generator)
            entry = TaskEntry(
                task.name,
                task.labels,
                prompt.vectors.detach(),
                0.02 * weight,
                torch.zeros(len(task.labels)),
            )
            pool.add_trained(task, entry)
        pool.backbone = uncached  # fitted with the cache on; timed with it off
        return pool

    pools = {(p, n): pool_of(n, p) for p in PLACEMENTS for n in SERVING_SIZES}
    log("pools built")
    loop_model = peft_model(len(bbc.labels), adapters=4).eval()
    single = peft_model(len(bbc.labels)).eval()
    dynamic = tokenizer(
        mixed, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )

    @torch.no_grad()
    def peft_forward() -> object:
        return single(**dynamic).logits

    @torch.no_grad()
    def peft_loop() -> object:
        # With no task id, a per-task setup runs every task's prompted pass over the batch.
        outputs = []
        for name in ("default", "t1", "t2", "t3"):
            loop_model.set_adapter(name)
            outputs.append(loop_model(**dynamic).logits)
        return outputs

    @torch.no_grad()
    def plain_forward() -> object:
        return backbone.model(**dynamic).last_hidden_state

    inference: dict[str, Callable[[], object]] = {
        f"inference.ours_routed_{p}": (lambda p=p: pools[(p, 4)].predict(mixed)) for p in PLACEMENTS
    }
    inference["inference.peft_prompted_forward"] = peft_forward
    inference["inference.plain_forward"] = plain_forward
    inference["inference.peft_per_task_loop_4"] = peft_loop
    for name, step in inference.items():
        with PeakMemory() as peak:
            step()
        memory[name] = peak.megabytes
    medians.update(interleaved(inference, repeats, warmup=0))
    log("inference timed")
    serving = {
        f"serving.{p}.{n}": (lambda p=p, n=n: pools[(p, n)].predict(mixed))
        for p in PLACEMENTS
        for n in SERVING_SIZES
    }
    medians.update(interleaved(serving, serving_repeats))
    log("serving timed")

    # 2. End to end ------------------------------------------------------------------------------
    curves: dict[str, list[tuple[float, float]]] = {}
    with PeakMemory() as peak:
        curves["peft"] = peft_curve(bbc, epochs, TARGET_ACCURACY)
    memory["end_to_end.peft"] = peak.megabytes
    log(f"peft curve {curves['peft']}")
    for placement in PLACEMENTS:
        with PeakMemory() as peak:
            curves[f"ours_{placement}"] = our_curve(
                backbone, bbc, placement, epochs, TARGET_ACCURACY
            )
        memory[f"end_to_end.ours_{placement}"] = peak.megabytes
        log(f"ours {placement} curve {curves[f'ours_{placement}']}")
    target = common_target(curves, TARGET_ACCURACY)
    end_to_end = {
        "task": bbc.name,
        "train_texts": len(bbc.train),
        "validation_texts": len(bbc.validation),
        "test_texts": len(bbc.test),
        "max_epochs": epochs,
        "target": target,
        "peft_recipe": f"AdamW lr {PEFT_LR}, linear schedule, batch {BATCH}, dynamic padding",
        "ours_recipe": f"train_task, TrainingConfig(epochs={epochs}, patience=0), else default",
        "curves": curves,
        "curve_columns": ["wall seconds", "test accuracy %", "CPU seconds"],
        "seconds_to_target": {tool: time_to(curve, target) for tool, curve in curves.items()},
        # The runs go one after the other, so a change in machine load between them moves the
        # wall-time ratio; process CPU time is less sensitive to it.
        "cpu_seconds_to_target": {
            tool: time_to(curve, target, column=2) for tool, curve in curves.items()
        },
        "epochs_to_target": {
            tool: next((i + 1 for i, entry in enumerate(curve) if entry[1] >= target - 1e-9), None)
            for tool, curve in curves.items()
        },
    }
    meta = {
        "command": "python benchmarks/perf.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "quick": args.quick,
        "repeats": {"train_step": repeats, "inference": repeats, "serving": serving_repeats},
        "commit": git_commit(),
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "load_average": [round(x, 2) for x in load_before],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
        "memory_method": "PeakMemory: resident set size sampled every 20 ms, above the level "
        "before (malloc_trim first); the models' weights were loaded before",
    }
    result = assemble(medians, end_to_end, memory, default_placement, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "perf.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out / "report.md", report_markdown(result).encode())
    atomic_write_bytes(args.out / "perf.png", plot_png(result))
    print(report_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
