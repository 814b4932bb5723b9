"""The generative benchmark's Markdown report, from its results.json summary."""

from __future__ import annotations

import json

from .. import metrics
from .report import _cell, confusion_table

_PROMPT_ENGINEERING = ("zero-shot", "k-shot")
_SOFT_PROMPT = "prompt-pool-oracle"  # each task's own soft prompt, the task given


def _value(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_generative_report(summary: dict) -> str:
    """Markdown: the methods table, each task's final metric, R matrices, conventions."""
    config, tasks, methods = summary["config"], summary["tasks"], summary["methods"]
    settings, model = config["settings"], summary["model"]
    names = [task["name"] for task in tasks]
    lines = [
        f"# Generative benchmark `{config['sequence']}`",
        "",
        "Made by: " + "; ".join(f"`{command}`" for command in summary["commands"]),
        "",
        f"Model: `{model['name']}`"
        + (f" (sha256 `{model['sha256']}`)" if model.get("sha256") else "")
        + ", frozen except where a method fine-tunes it.",
        "",
        "| task | metric | train / validation / test | source (pinned wheel: data file) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['name']} | {t['metric']} | {t['train']} / {t['validation']} / {t['test']} | "
        f"{t['source']} |"
        for t in tasks
    ]
    lines += [
        "",
        f"Every input cut to its first {settings['max_input_tokens']} tokens; trained methods: "
        f"{settings['epochs']} epoch(s) per task at batch {settings['batch_size']}; soft prompts "
        f"of {settings['prompt_length']} vectors (Adam, lr {settings['prompt_lr']}); full "
        f"fine-tuning AdamW lr {settings['finetune_lr']}; greedy decoding; k-shot: "
        f"{settings['shots']} examples; seed {settings['seed']}.",
        "",
        "| method | avg metric | forgetting | BWT | routing % | trained params | "
        "stored per task | train s | generated tok/s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in methods.items():
        lines.append(
            f"| {name} | {_cell(entry['average_accuracy'])} | {_cell(entry['forgetting'])} | "
            f"{_cell(entry['bwt'])} | {_cell(entry['routing_accuracy'])} | "
            f"{entry['trainable_parameters']:,} | {metrics.format_bytes(entry['bytes_per_task'])}"
            f" | {entry['train_seconds']['mean']:.0f} | {_value(entry['tokens_per_second'])} | "
            f"{entry['peak_memory_mb']:.0f} |"
        )
    lines += ["", "## Each task's metric after the last task", ""]
    lines += _final_table(names, tasks, methods)
    lines += _soft_prompt_verdict(names, methods)
    lines += ["", "## R matrices (rows: after learning task i; columns: task j)", ""]
    for name, entry in methods.items():
        matrix = entry["accuracy_matrix"]
        lines += [f"`{name}`:", "", "| after | " + " | ".join(names) + " |"]
        lines += ["|---|" + "---|" * len(names)]
        for i, row in enumerate(matrix):
            if all(value is None for value in row):
                continue
            lines.append(f"| {names[i]} | " + " | ".join(_value(v) for v in row) + " |")
        lines.append("")
    lines += _confusion(methods)
    lines += [
        "## Conventions",
        "",
        "R[i][j] is task j's metric in points (exact match: 100 when the generated text equals "
        "the target once surrounding and repeated spaces are dropped, case counting; ROUGE-L: "
        "rouge-score's F-measure with stemming, × 100) after learning task i. Avg metric "
        "A = mean_j R[T][j]; forgetting F = mean over j<T of max_{l<T} R[l][j] − R[T][j] "
        "(positive = forgotten); BWT = mean over j<T of R[T][j] − R[j][j]. The joint "
        "upper bound is trained once on every task, so only its last row exists.",
        "Written prompts are given each input's task (its instruction); the routed pool is "
        "not; `prompt-pool-oracle` is the pool with the task given. Routing %: the share of a "
        "task's final test inputs sent to its own prompt, averaged over tasks.",
        "Stored per task: the pool's prompt and selector statistics; a written prompt's text; "
        "the shared prompt divided by the tasks it serves; a whole model copy for "
        "fine-tuning. Generated tok/s: tokens generated over the seconds spent generating "
        "them, over all of the method's evaluations (batches of "
        f"{settings['eval_batch_size']}). Timings on a shared, loaded machine: compare "
        "ratios within this run.",
        "",
        f"Versions: {json.dumps(summary.get('versions', {}))}.",
    ]
    return "\n".join(lines) + "\n"


def _final_table(names: list[str], tasks: list[dict], methods: dict) -> list[str]:
    lines = ["| method | " + " | ".join(f"{t['name']} ({t['metric']})" for t in tasks) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for name, entry in methods.items():
        final = entry["accuracy_matrix"][-1]
        lenient = entry["runs"][0].get("lenient_exact_match", [[None] * len(names)])[-1]
        cells = [
            _value(value) + (f" ({_value(loose)})" if loose is not None and loose != value else "")
            for value, loose in zip(final, lenient, strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In parentheses, where it differs: the exact match of the output's first word, "
        'lower-cased, without punctuation (a written prompt\'s "Positive." counts there).',
    ]
    return lines


def _soft_prompt_verdict(names: list[str], methods: dict) -> list[str]:
    """Says, task by task, whether each task's own soft prompt beats both written prompts."""
    if _SOFT_PROMPT not in methods or not all(m in methods for m in _PROMPT_ENGINEERING):
        return []
    soft = methods[_SOFT_PROMPT]["accuracy_matrix"][-1]
    lines = ["", "Soft prompt (the pool's entry, task given) against the written prompts:", ""]
    for j, name in enumerate(names):
        written = {m: methods[m]["accuracy_matrix"][-1][j] for m in _PROMPT_ENGINEERING}
        best = max(written.values())
        verdict = "beats both" if soft[j] > best else "does NOT beat both"
        lines.append(
            f"- {name}: soft prompt {_value(soft[j])} vs zero-shot {_value(written['zero-shot'])}"
            f", k-shot {_value(written['k-shot'])}: {verdict}."
        )
    return lines


def _confusion(methods: dict) -> list[str]:
    pool = methods.get("prompt-pool")
    confusion = pool and pool["runs"][0].get("routing_confusion")
    if not confusion:
        return []
    return [
        "Where `prompt-pool` sent each task's final test inputs (rows: true task; columns: "
        "routed task):",
        "",
        *confusion_table(confusion),
        "",
    ]
