"""The pure parts of benchmarks/perf.py: medians, ratios, targets, report and plot assembly.

Nothing here times anything; the PEFT setup test needs peft and skips without it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PERF_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "perf.py"


@pytest.fixture(scope="module")
def perf():
    spec = importlib.util.spec_from_file_location("perf_benchmark", PERF_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["perf_benchmark"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("perf_benchmark", None)


def fake_medians(perf) -> dict[str, float]:
    medians = {
        "train_step.ours_input": 300.0,
        "train_step.ours_query_layer": 150.0,
        "train_step.ours_input_bfloat16": 240.0,
        "train_step.ours_query_layer_bfloat16": 120.0,
        "train_step.peft": 400.0,
        "train_step.full_finetune": 800.0,
        "inference.ours_routed_input": 220.0,
        "inference.ours_routed_query_layer": 110.0,
        "inference.peft_prompted_forward": 100.0,
        "inference.plain_forward": 80.0,
        "inference.peft_per_task_loop_4": 440.0,
    }
    for placement in perf.PLACEMENTS:
        for count in perf.SERVING_SIZES:
            medians[f"serving.{placement}.{count}"] = 100.0 + count
    return medians


def fake_result(perf) -> dict:
    curves = {
        "peft": [(10.0, 50.0, 18.0), (20.0, 88.0, 38.0), (30.0, 91.0, 60.0)],
        "ours_input": [(8.0, 85.0, 15.0), (16.0, 92.0, 30.0)],
        "ours_query_layer": [(5.0, 70.0, 9.0), (10.0, 89.0, 20.0)],
    }
    target = perf.common_target(curves, 90.0)
    end_to_end = {
        "task": "bbc",
        "target": target,
        "curves": curves,
        "seconds_to_target": {tool: perf.time_to(c, target) for tool, c in curves.items()},
        "cpu_seconds_to_target": {tool: perf.time_to(c, target, 2) for tool, c in curves.items()},
        "epochs_to_target": dict.fromkeys(curves, 1),
    }
    meta = {"command": "python benchmarks/perf.py --quick", "threads": 2}
    return perf.assemble(fake_medians(perf), end_to_end, {"train_step.peft": 12.5}, "input", meta)


def test_median_and_ratio(perf):
    assert perf.median_ms([0.3, 0.1, 0.2]) == 200.0
    assert perf.ratio(1.0, 4.0) == 0.25
    assert perf.ratio(None, 4.0) is None
    assert perf.ratio(1.0, 0.0) is None


def test_interleaved_runs_each_step_once_per_round(perf):
    calls: list[str] = []
    ticks = iter(range(1000))
    medians = perf.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=3,
        warmup=1,
        clock=lambda: float(next(ticks)),
    )
    assert calls == ["a", "b"] * 4  # warm-up round, then three interleaved rounds
    assert medians == {"a": 1000.0, "b": 1000.0}  # each call spans one tick of the fake clock


def test_target_and_time_to_target(perf):
    curves = {"x": [(1.0, 80.0), (2.0, 95.0)], "y": [(1.0, 60.0), (2.0, 85.0)]}
    assert perf.common_target(curves, 90.0) == 85.0  # y never reaches 90: its best is the bar
    assert perf.common_target({"x": [(1.0, 95.0)]}, 90.0) == 90.0
    assert perf.time_to(curves["x"], 85.0) == 2.0
    assert perf.time_to(curves["y"], 90.0) is None


def test_assemble_puts_every_ratio_at_top_level(perf):
    result = fake_result(perf)
    for key in perf.RATIO_KEYS:
        assert isinstance(result[key], float)
        assert result[key] == result[f"{key}_input"]  # the default placement's figure
    assert result["train_step_ratio_vs_peft"] == 0.75
    assert result["train_step_ratio_vs_peft_query_layer"] == 0.375
    assert result["routed_vs_prompted_forward"] == 2.2
    assert result["speedup_vs_per_task_loop_query_layer"] == 4.0
    assert result["serving_64_vs_1_tasks"] == round(164 / 101, 3)
    # target: min(90, peft's best 91, input's best 92, query_layer's best 89) = 89
    assert result["end_to_end"]["target"] == 89.0
    assert result["train_step_ratio_vs_peft_input_bfloat16"] == 0.6
    assert result["end_to_end_ratio_vs_peft"] == round(16.0 / 30.0, 3)
    assert result["end_to_end_cpu_ratio_vs_peft"] == 0.5  # 30 CPU s against 60
    assert result["median_ms"]["train_step.peft"] == 400.0
    assert result["command"].endswith("--quick")


def test_report_and_plot(perf):
    result = fake_result(perf)
    report = perf.report_markdown(result)
    for key in perf.RATIO_KEYS:
        assert f"`{key}`" in report
    assert "| train_step.peft | 400.0 |" in report
    assert "n/a" not in report.split("End to end")[0]
    png = perf.plot_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_peft_setup_trains_only_prompt_and_classifier(perf):
    pytest.importorskip("peft")
    model = perf.peft_model(num_labels=3)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # 16 virtual tokens of width 384, and the classifier (3 x 384 + 3)
    assert trainable == perf.PROMPT_LENGTH * 384 + 3 * 384 + 3
    looped = perf.peft_model(num_labels=3, adapters=2)
    looped.set_adapter("t1")  # the per-task loop's second adapter exists
