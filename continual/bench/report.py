"""The benchmark's Markdown report and plots, drawn from a results.json summary."""

from __future__ import annotations

import json
from pathlib import Path

from .. import metrics
from ..errors import ContinualError


def _cell(entry: dict | None, digits: int = 1) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def render_report(summary: dict) -> str:
    """Markdown: the methods × metrics table, costs, settings and conventions."""
    config = summary["config"]
    lines = [
        f"# Benchmark `{config['sequence']}`",
        "",
        f"Made by: `{summary['command']}`"
        + "".join(f", continued by `{c}`" for c in summary.get("resumed_with", [])),
        "",
        f"{config['orders']} task order(s), seed {config['seed']}; tasks: "
        + ", ".join(
            f"{t['name']} ({len(t['labels'])} labels, {t['train']} train / {t['test']} test)"
            for t in summary["tasks"]
        )
        + ".",
        "Every method is scored with no task id (except `prompt-pool-oracle`): an input counts "
        "only if the method picks its task's right label among all labels seen so far.",
        "",
        "| method | avg accuracy % | forgetting | BWT | routing % | trainable params | "
        "stored per task | train s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["methods"].items():
        lines.append(
            f"| {name} | {_cell(entry['average_accuracy'])} | {_cell(entry['forgetting'])} | "
            f"{_cell(entry['bwt'])} | {_cell(entry['routing_accuracy'])} | "
            f"{entry['trainable_parameters']:,} | {metrics.format_bytes(entry['bytes_per_task'])}"
            f" | {_cell(entry['train_seconds'], 0)} | {entry['peak_memory_mb']:.0f} |"
        )
    lines += [
        "",
        "Values are mean ± std over task orders. Conventions (R[i][j]: accuracy on task j after "
        "learning task i): average accuracy A = mean_j R[T][j]; forgetting F = mean over j<T of "
        "max_{l<T} R[l][j] − R[T][j] (positive = forgotten); BWT = mean over j<T of "
        "R[T][j] − R[j][j]. FWT is not reported: in this task-agnostic setting no method can "
        "name a task's labels before learning it, so R[j−1][j] is 0 for all.",
        "Routing %: for each task, the share of its final test inputs sent to its own "
        "prompt; averaged over tasks.",
        "Stored per task: bytes a new task adds (the pool: prompt, head and the selector's "
        "statistics, of which the Gaussian selector's covariance factors are most; full fine-tuning: a "
        "whole model copy). Trainable params: prompt and head for the pool. The prompt-pool "
        "rows share the same trained prompts (a task's prompt does not depend on earlier "
        "tasks); they differ only in routing, so their train seconds are one training, shown "
        "once per row.",
        "Peak MB: the process's peak resident memory while the method ran, above what was "
        "live when it started (Python, torch, the frozen backbone and the data not counted); "
        "the largest over orders.",
        "Timings on a shared machine: compare ratios within this run, not absolute seconds.",
        "",
    ]
    pool = summary["methods"].get("prompt-pool")
    confusion = pool and pool["runs"][0].get("routing_confusion")
    if confusion:
        lines += [
            "",
            "Where `prompt-pool` sent each task's final test inputs (rows: true task; columns: "
            "routed task; first order):",
            "",
            *confusion_table(confusion),
        ]
    lines += [
        "",
        f"Versions: {json.dumps(summary.get('versions', {}))}. "
        f"Wall time: {summary.get('wall_seconds', '?')} s.",
    ]
    return "\n".join(lines) + "\n"


def confusion_table(confusion: dict[str, dict[str, int]]) -> list[str]:
    """Markdown rows: each task's inputs counted by the task they were routed to."""
    names = list(confusion)
    return [
        "| task | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(
            f"| {row} | " + " | ".join(str(confusion[row].get(col, 0)) for col in names) + " |"
            for row in names
        ),
    ]


def draw_plots(directory: str | Path) -> list[Path]:
    """Draw the forgetting plot, heatmaps, accuracy vs forgetting and cost from results.json."""
    from . import plots

    directory = Path(directory)
    path = directory / "results.json"
    try:
        summary = json.loads(path.read_text())
        methods = summary["methods"]
    except (OSError, ValueError, KeyError) as error:
        raise ContinualError(f"{path}: not a benchmark result ({error})") from None
    sequential = {
        name: entry for name, entry in methods.items() if not entry["runs"][0].get("final_only")
    }
    first = next(iter(sequential.values()), None) or next(iter(methods.values()))
    measure = summary.get("measure", "accuracy")  # a generative run's R holds task metrics
    names = first["task_order"]
    # Matrices of the first order, whose task order all methods share.
    matrices = {
        name: entry["accuracy_matrix"]
        for name, entry in sequential.items()
        if entry["task_order"] == names
    }
    written = [
        plots.plot_forgetting(names, matrices, directory / "forgetting.png", measure=measure),
        plots.plot_accuracy_heatmaps(
            names, matrices, directory / "accuracy_matrices.png", measure=measure
        ),
        plots.plot_accuracy_vs_forgetting(
            {
                name: {
                    "average_accuracy": entry["average_accuracy"],
                    "forgetting": entry["forgetting"],
                }
                for name, entry in methods.items()
            },
            directory / "accuracy_vs_forgetting.png",
            measure=measure,
        ),
        plots.plot_cost(
            {
                name: {
                    "bytes_per_task": entry["bytes_per_task"],
                    "train_seconds": entry["train_seconds"]["mean"],
                    "trainable_parameters": entry["trainable_parameters"],
                }
                for name, entry in methods.items()
            },
            directory / "cost.png",
        ),
    ]
    return written
