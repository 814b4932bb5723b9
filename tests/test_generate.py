"""Text-to-text tasks on tiny random GPT-2, Llama and T5 language models saved to a folder and
loaded as a user would (`Backbone.load(DIR)`, ``--backbone DIR``).

Generation is checked against a plain reference (a full forward pass without cache over
[prompt; input; tokens so far], argmax); a batch mixing two text-to-text tasks and a label
task gives each row what it gets alone; entries train, save, load, export and import; adding
tasks leaves earlier entries bit-identical; bad input is one line and exit 2.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import COLOURS, synthetic_pairs, tiny_family

from continual import Backbone, ContinualError, PromptPool, Task, TrainingConfig
from continual.cli import main
from continual.generate import (
    Sampling,
    end_of_text_ids,
    generate,
    target_token_ids,
)
from continual.prompt import SoftPrompt
from continual.text_training import teacher_forced_loss

FAMILIES = ["gpt2", "llama", "t5"]
TEXTS = ["say red", "the lion and the tiger and the bear were here today", "a dog ran"]
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird"]


def _language_model(family: str, vocab: int):
    """The language model with its output head over `tiny_family`'s configuration."""
    import transformers as hf

    _, config = tiny_family(family, vocab)
    config.decoder_start_token_id = 0  # as T5 checkpoints name it (the pad token)
    head = {"gpt2": hf.GPT2LMHeadModel, "llama": hf.LlamaForCausalLM}
    return head.get(family, hf.T5ForConditionalGeneration)(config)


def save_language_model(family: str, tokenizer, folder) -> None:
    """A tiny random language model of ``family`` and the MiniLM tokenizer (its [SEP] as the
    end-of-text token) saved in ``folder``."""
    torch.manual_seed(0)
    _language_model(family, len(tokenizer)).save_pretrained(folder)
    tokens = copy.deepcopy(tokenizer)
    tokens.eos_token = "[SEP]"
    tokens.save_pretrained(folder)


@pytest.fixture(scope="module", params=FAMILIES)
def model_dir(request, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"lm-{request.param}")
    save_language_model(request.param, tokenizer, folder)
    return request.param, folder


@pytest.fixture(scope="module")
def backbone(model_dir) -> Backbone:
    return Backbone.load(model_dir[1], max_length=32)


def echo_task(name: str, seed: int, metric: str = "exact_match") -> Task:
    pairs = [(f"say {word} {end}", f"{word} {word}") for word in WORDS for end in ("now", "again")]
    return Task.from_pairs(name, pairs, kind="generate", metric=metric, seed=seed)


@pytest.fixture(scope="module")
def grown(backbone, tmp_path_factory):
    """A pool that learned a text-to-text task, a label task and another text-to-text task,
    with a copy of the first entry's tensors taken right after it was learned."""
    pool = PromptPool(
        backbone,
        prompt_length=4,
        selector="prototypes",
        training=TrainingConfig(epochs=2, batch_size=8, prompt_lr=0.1),
    )
    pool.learn(echo_task("echo", 0), progress=False)
    first = {key: value.clone() for key, value in pool.entries[0].tensors().items()}
    pool.learn(Task.from_pairs("colours", synthetic_pairs(COLOURS, 12, seed=1)), progress=False)
    pool.learn(echo_task("echo-chrf", 1, metric="chrf"), progress=False)
    folder = tmp_path_factory.mktemp("pool")
    pool.save(folder)
    return pool, first, folder


def _reference(backbone: Backbone, prompt: torch.Tensor, text: str, steps: int) -> str:
    """Greedy answer by full forward passes without cache over [prompt; input; so far]."""
    model = backbone.language_model
    batch = backbone.tokenize([text])
    ends = end_of_text_ids(backbone)
    written: list[int] = []
    for _ in range(steps):
        if backbone.is_seq2seq:
            embeds = torch.cat([prompt[None], backbone.embed(batch["input_ids"])], dim=1)
            start = model.config.decoder_start_token_id
            logits = model(
                inputs_embeds=embeds, decoder_input_ids=torch.tensor([[start, *written]])
            ).logits
        else:
            ids = torch.cat([batch["input_ids"], torch.tensor([written], dtype=torch.long)], 1)
            embeds = torch.cat([prompt[None], backbone.embed(ids)], dim=1)
            logits = model(inputs_embeds=embeds).logits
        token = int(logits[0, -1].argmax())
        if token in ends:
            break
        written.append(token)
    return backbone.tokenizer.decode(written, skip_special_tokens=True).strip()


@torch.no_grad()
def test_generation_equals_a_reference_without_cache_and_each_row_alone(backbone):
    torch.manual_seed(1)
    prompts = torch.randn(len(TEXTS), 4, backbone.hidden_size) * 0.5
    batch = backbone.tokenize(TEXTS)
    together = generate(backbone, prompts, batch["input_ids"], batch["attention_mask"], [6] * 3)
    for row, text in enumerate(TEXTS):
        alone = backbone.tokenize([text])
        one = generate(backbone, prompts[row : row + 1], *alone.values(), [6])[0]
        assert one.text == together[row].text == _reference(backbone, prompts[row], text, 6)
        assert one.text  # a random model writes some words before its end-of-text token
        assert one.score == pytest.approx(together[row].score, rel=1e-4)


@torch.no_grad()
def test_generation_stops_at_a_stop_text_and_at_max_new_tokens(backbone):
    torch.manual_seed(1)
    prompts = torch.randn(2, 4, backbone.hidden_size) * 0.5
    batch = backbone.tokenize(TEXTS[:2])
    free = generate(backbone, prompts, batch["input_ids"], batch["attention_mask"], [6, 6])
    words = free[0].text.split()
    assert len(words) >= 2
    stopped = generate(
        backbone, prompts, batch["input_ids"], batch["attention_mask"], [6, 2], [(words[1],), ()]
    )
    assert stopped[0].text == free[0].text[: free[0].text.find(words[1])].strip()
    short = backbone.tokenizer.decode(
        backbone.tokenizer(free[1].text, add_special_tokens=False)["input_ids"][:2]
    )
    assert stopped[1].text == short.strip()


def _next_log_probs(backbone: Backbone, prompt: torch.Tensor, text: str, written: list[int]):
    """Next-token log-probabilities (V,) by a full forward pass without cache."""
    model = backbone.language_model
    batch = backbone.tokenize([text])
    if backbone.is_seq2seq:
        embeds = torch.cat([prompt[None], backbone.embed(batch["input_ids"])], dim=1)
        start = model.config.decoder_start_token_id
        ids = torch.tensor([[start, *written]])
        logits = model(inputs_embeds=embeds, decoder_input_ids=ids).logits
    else:
        ids = torch.cat([batch["input_ids"], torch.tensor([written], dtype=torch.long)], 1)
        logits = model(inputs_embeds=torch.cat([prompt[None], backbone.embed(ids)], 1)).logits
    return logits[0, -1].double().log_softmax(-1)


def _reference_beams(backbone, prompt, text: str, width: int, steps: int) -> str:
    """Beam search written plainly: every live beam extended by every token, the best
    ``width`` kept (a finished beam stays as it is), the best mean log-probability wins."""
    ends = set(end_of_text_ids(backbone))
    beams = [([], 0.0, False)]  # (tokens, summed log-probability, finished)
    for _ in range(steps):
        candidates = []
        for tokens, score, finished in beams:
            if finished:
                candidates.append((tokens, score, True))
                continue
            values, ids = _next_log_probs(backbone, prompt, text, tokens).topk(width)
            for value, token in zip(values.tolist(), ids.tolist()):
                grown = [*tokens, token]
                candidates.append((grown, score + value, token in ends or len(grown) >= steps))
        beams = sorted(candidates, key=lambda beam: -beam[1])[:width]
        if all(finished for _, _, finished in beams):
            break
    tokens = max(beams, key=lambda beam: beam[1] / max(len(beam[0]), 1))[0]
    tokens = tokens[:-1] if tokens and tokens[-1] in ends else tokens
    return backbone.tokenizer.decode(tokens, skip_special_tokens=True).strip()


@torch.no_grad()
def test_beam_search_equals_a_plain_reference_and_each_row_alone(backbone):
    torch.manual_seed(1)
    prompts = torch.randn(len(TEXTS), 4, backbone.hidden_size) * 0.5
    batch = backbone.tokenize(TEXTS)
    together = generate(backbone, prompts, *batch.values(), [5] * 3, beams=3)
    for row, text in enumerate(TEXTS):
        alone = generate(backbone, prompts[row : row + 1], *backbone.tokenize([text]).values(),
                         [5], beams=3)[0]  # fmt: skip
        assert (
            alone.text == together[row].text == _reference_beams(backbone, prompts[row], text, 3, 5)
        )
    with pytest.raises(ContinualError, match="not both"):
        generate(backbone, prompts, *batch.values(), [5] * 3, sampling=Sampling(), beams=2)


@torch.no_grad()
def test_sampling_is_seeded_and_its_top_1_is_greedy(backbone):
    torch.manual_seed(1)
    prompts = torch.randn(len(TEXTS), 4, backbone.hidden_size) * 0.5
    batch = backbone.tokenize(TEXTS)

    def texts(sampling=None) -> list[str]:
        answers = generate(backbone, prompts, *batch.values(), [6] * 3, sampling=sampling)
        return [answer.text for answer in answers]

    assert texts(Sampling(temperature=0.7, top_k=1, seed=3)) == texts()
    assert texts(Sampling(seed=5)) == texts(Sampling(seed=5))
    assert texts(Sampling(seed=5)) != texts(Sampling(seed=6))
    with pytest.raises(ContinualError, match="temperature"):
        Sampling(temperature=0)


def test_a_text_to_text_entry_learns(backbone):
    task = echo_task("echo", 0)
    pool = PromptPool(
        backbone,
        prompt_length=4,
        selector="prototypes",
        training=TrainingConfig(epochs=3, batch_size=8, prompt_lr=0.1, patience=0),
    )
    entry = pool.learn(task, progress=False)
    assert entry.kind == "generate" and entry.labels == []
    assert entry.generation is not None and entry.generation.max_new_tokens >= 3
    assert set(entry.tensors()) == {"prompt", *(f"selector.{k}" for k in entry.selector_state)}
    assert entry.stats["validation_score"] is not None
    # Teacher-forced loss on the training split: lower under the learned prompt than under the
    # prompt training started from (the same seeded draw).
    start = SoftPrompt.initialise(backbone, 4, "vocab", generator=torch.Generator().manual_seed(0))
    texts = [text for text, _ in task.train]
    targets = target_token_ids(backbone, [t for _, t in task.train], 99)
    batch = backbone.tokenize(texts)
    with torch.no_grad():
        before = teacher_forced_loss(backbone, start(len(texts)), *batch.values(), targets)
        after = teacher_forced_loss(
            backbone, entry.prompt.expand(len(texts), -1, -1), *batch.values(), targets
        )
    assert float(after) < float(before)


def test_mixed_batch_gives_each_row_what_it_gets_alone(grown):
    pool, _, _ = grown
    texts = ["say red now", "the warm red and the gold here today", "say fish again and again"]
    tasks = ["echo", "colours", "echo-chrf"]
    together = pool.predict(texts, tasks=tasks)
    assert [p.task for p in together] == tasks
    assert together[1].label in COLOURS and together[1].output is None
    assert together[0].label is None and isinstance(together[0].output, str)
    for text, task, mixed in zip(texts, tasks, together):
        alone = pool.predict([text], tasks=task)[0]
        assert (alone.label, alone.output) == (mixed.label, mixed.output)
        assert alone.score == pytest.approx(mixed.score, rel=1e-4)
    # Routed as well: every row is answered by whichever entry the selector chose.
    routed = pool.predict(texts)
    for prediction in routed:
        entry = pool.entries[pool.tasks.index(prediction.task)]
        assert (prediction.output is None) == (entry.kind == "classify")


def test_learning_more_tasks_leaves_the_first_entry_bit_identical(grown):
    pool, first, _ = grown
    now = pool.entries[0].tensors()
    assert set(now) == set(first)
    for key, value in first.items():
        assert torch.equal(now[key], value), key


def test_a_text_to_text_pool_saves_loads_exports_and_imports(grown, model_dir, tmp_path):
    pool, _, folder = grown
    manifest = json.loads((folder / "manifest.json").read_text())
    record = manifest["tasks"][0]
    assert record["labels"] == [] and record["generation"]["metric"] == "exact_match"
    assert "generation" not in manifest["tasks"][1]  # a label task's record is as before
    loaded = PromptPool.load(folder, model_dir[1])
    texts = ["say moon now", "the blue and the navy", "say cat"]
    assert [p.to_dict() for p in loaded.predict(texts)] == [
        p.to_dict() for p in pool.predict(texts)
    ]
    assert [e.generation for e in loaded.entries] == [e.generation for e in pool.entries]
    exported = pool.export_task("echo-chrf", tmp_path / "echo.safetensors")
    fresh = PromptPool(pool.backbone, prompt_length=4, selector="prototypes")
    entry = fresh.import_task(exported)
    assert entry.generation == pool.entries[2].generation
    assert torch.equal(entry.prompt, pool.entries[2].prompt)
    assert (
        fresh.predict(["say sun"])[0].output
        == pool.predict(["say sun"], tasks="echo-chrf")[0].output
    )
    # The folder-level verbs keep the settings too.
    assert (
        main(["export", str(folder), "--task", "echo", "--out", str(tmp_path / "cli.safetensors")])
        == 0
    )
    assert main(["import", str(tmp_path / "other"), str(tmp_path / "cli.safetensors")]) == 0
    other = json.loads((tmp_path / "other" / "manifest.json").read_text())
    assert other["tasks"][0]["generation"] == record["generation"]


def test_evaluate_scores_a_text_to_text_task_by_its_metric(grown):
    pool, _, _ = grown
    examples = [("say red now", "red red"), ("say tree again", "tree tree")]
    score = pool.evaluate("echo-chrf", examples, oracle=True)
    assert score.metric == "chrf"
    outputs = [p.output for p in pool.predict([t for t, _ in examples], tasks="echo-chrf")]
    from continual.metrics import task_metric_scores

    expected = task_metric_scores("chrf", outputs, [t for _, t in examples])
    assert score.accuracy == pytest.approx(sum(expected) / 2)


def test_cli_learns_predicts_and_refuses_bad_targets(model_dir, tmp_path, capsys):
    _, folder = model_dir
    train = tmp_path / "echo.csv"
    rows = [f"say {w} {e},{w} {w}" for w in WORDS for e in ("now", "again")]
    train.write_text("text,target\n" + "\n".join(rows) + "\n")
    pool = tmp_path / "pool"
    common = ["--backbone", str(folder), "--max-length", "32", "--no-progress"]
    assert (
        main(
            [
                "learn",
                str(pool),
                "--task",
                "echo",
                "--train",
                str(train),
                "--epochs",
                "1",
                "--prompt-length",
                "4",
                "--metric",
                "chrf",
                *common,
            ]
        )
        == 0
    )
    learned = json.loads(capsys.readouterr().out)
    assert learned["metric"] == "chrf" and learned["labels"] == []
    assert main(["predict", str(pool), "say red now", "--backbone", str(folder)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert set(line) == {"text", "task", "label", "output", "score"}
    assert line["task"] == "echo" and line["label"] is None and isinstance(line["output"], str)

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "a", "target": "b"}\n{"text": "c", "target": " "}\n')
    missing = tmp_path / "missing.csv"
    missing.write_text("text,target\na,b\nc\n")
    for bad, message in (
        (empty, f"{empty}, row 2, field 'target': empty target"),
        (missing, f"{missing}, row 2: missing field 'target'"),
    ):
        assert main(["learn", str(pool), "--task", "bad", "--train", str(bad), *common]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {message}\n"


def test_text_to_text_task_on_an_encoder_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    train = tmp_path / "echo.csv"
    train.write_text("text,target\n" + "\n".join(f"say {w},{w}" for w in WORDS) + "\n")
    code = main(
        [
            "learn",
            str(tmp_path / "pool"),
            "--task",
            "echo",
            "--train",
            str(train),
            "--backbone",
            str(tiny_model_dir),
            "--max-length",
            "32",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is an encoder: a text-to-text task needs" in err


def test_a_t5_encoder_saved_to_a_folder_learns_label_tasks(tokenizer, tmp_path, capsys):
    import transformers as hf

    torch.manual_seed(0)
    config = hf.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2
    )
    hf.T5EncoderModel(config).save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    train = tmp_path / "colours.csv"
    pairs = synthetic_pairs(COLOURS, 10, seed=1)
    train.write_text("text,label\n" + "\n".join(f"{t},{label}" for t, label in pairs) + "\n")
    code = main(
        [
            "learn",
            str(tmp_path / "pool"),
            "--task",
            "colours",
            "--train",
            str(train),
            "--backbone",
            str(tmp_path / "t5"),
            "--epochs",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert Backbone.load(tmp_path / "t5").architecture == "T5EncoderModel"


def test_the_server_answers_with_the_generated_output(grown, model_dir):
    from fastapi.testclient import TestClient

    from continual.serve import create_app

    pool, _, folder = grown
    texts = ["say moon now", "the blue and the navy"]
    app = create_app(folder, backbone=str(model_dir[1]), max_wait=0.0)
    with TestClient(app) as client:
        response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [p.to_dict() for p in pool.predict(texts)]
    assert any(p["output"] is not None for p in response.json()["predictions"])


def test_a_manifest_with_bad_generation_settings_is_refused(grown, model_dir, tmp_path):
    import shutil

    from continual import PoolFormatError

    _, _, folder = grown
    copy_dir = tmp_path / "pool"
    shutil.copytree(folder, copy_dir)
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    manifest["tasks"][0]["generation"]["max_new_tokens"] = -1
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PoolFormatError, match="task 0: field 'generation': max_new_tokens"):
        PromptPool.load(copy_dir, model_dir[1])
    manifest["tasks"][0]["generation"] = None  # a label task without a head
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PoolFormatError, match="labels"):
        PromptPool.load(copy_dir, model_dir[1])


@pytest.mark.slow
def test_a_text_to_text_task_learns_under_torchrun_as_in_one_process(tokenizer, tmp_path):
    """Two processes (gloo) train the prompt data-parallel; it matches one process's within
    the tolerance test_distributed explains (float rounding of differently padded halves)."""
    import subprocess
    import sys

    from continual.storage import read_entries

    folder = tmp_path / "llama"
    save_language_model("llama", tokenizer, folder)
    train = tmp_path / "echo.csv"
    rows = [f"say {w} {e},{w} {w}" for w in WORDS for e in ("now", "again", "please")]
    train.write_text("text,target\n" + "\n".join(rows) + "\n")
    args = ["--task", "echo", "--train", str(train), "--backbone", str(folder), "--epochs", "2",
            "--prompt-length", "4", "--max-length", "32", "--selector", "prototypes",
            "--no-progress"]  # fmt: skip
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    assert main(["learn", str(single), *args]) == 0
    script = Path(sys.executable).with_name("continual")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    done = subprocess.run(
        [*launch, "2", str(script), "learn", str(parallel), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_entries(single)[0], read_entries(parallel)[0]
    assert two.stats["processes"] == 2 and two.generation == one.generation
    assert float((one.prompt - two.prompt).abs().max()) <= 1e-5
    assert two.stats["best_epoch"] == one.stats["best_epoch"]
