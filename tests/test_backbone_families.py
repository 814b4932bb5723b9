"""Every backbone family on tiny random configs: encoders without token types (DistilBERT), with
offset positions (RoBERTa), T5 encoders, and decoder-only language models (Llama, GPT-2, Qwen2).

Each family learns two tasks; a mixed-task batch equals each row alone; the first entry stays
bit-identical; a pool saves and loads; queries equal the middle layer of a full pass.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_family as _config

from continual import Backbone, ContinualError, PoolFormatError, PromptPool, TrainingConfig
from continual.placement import prompted_features
from continual.storage import MANIFEST

TEXTS = ["the red and the blue", "a dog", "the lion and the tiger and the bear were here today"]


FAMILIES = ["distilbert", "roberta", "t5", "llama", "gpt2", "qwen2"]
DECODERS = {"llama", "gpt2", "qwen2"}


def make_backbone(family: str, tokenizer, seed: int = 0, **options) -> Backbone:
    cls, config = _config(family, len(tokenizer))
    torch.manual_seed(seed)
    return Backbone(
        cls(config), copy.deepcopy(tokenizer), f"tiny-{family}", max_length=32, **options
    )


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tokenizer):
    return request.param, make_backbone(request.param, tokenizer)


@pytest.fixture(scope="module")
def grown(family, synthetic_tasks, tmp_path_factory):
    name, backbone = family
    colours, animals = synthetic_tasks
    pool = PromptPool(
        backbone, prompt_length=4, selector="prototypes", training=TrainingConfig(epochs=1)
    )
    pool.learn(colours, progress=False)
    first = {key: value.clone() for key, value in pool.entries[0].tensors().items()}
    pool.learn(animals, progress=False)
    directory = tmp_path_factory.mktemp(f"pool-{name}")
    pool.save(directory)
    return name, backbone, pool, first, directory


def test_family_is_recognised(family):
    name, backbone = family
    assert backbone.is_decoder == (name in DECODERS)
    assert backbone.pooling == "mean"  # measured better than the last token on SmolLM2
    # Token types only where the model has a table for them: never for GPT-2 or DistilBERT.
    assert (
        backbone.extra_inputs(torch.ones(1, 2)).get("token_type_ids") is None or name == "roberta"
    )
    assert backbone.tokenizer.padding_side == "right"


def test_learns_two_tasks_and_earlier_entry_stays_bit_identical(grown):
    _, _, pool, first, _ = grown
    assert pool.tasks == ["colours", "animals"]
    for key, tensor in pool.entries[0].tensors().items():
        assert torch.equal(tensor, first[key]), key
    assert all(torch.isfinite(t).all() for e in pool.entries for t in e.tensors().values())


def test_mixed_batch_equals_each_row_alone(grown):
    from conftest import assert_mixed_batch_equals_each_row_alone

    _, _, pool, _, _ = grown
    texts = TEXTS + ["the cat and the wolf"]
    assert_mixed_batch_equals_each_row_alone(pool, texts, torch.tensor([0, 1, 0, 1]))


def test_save_load_round_trip(grown):
    _name, backbone, pool, _, directory = grown
    loaded = PromptPool.load(directory, backbone)
    assert loaded.tasks == pool.tasks
    for a, b in zip(pool.entries, loaded.entries):
        for key, tensor in a.tensors().items():
            assert torch.equal(tensor, b.tensors()[key]), key
    assert [p.label for p in loaded.predict(TEXTS)] == [p.label for p in pool.predict(TEXTS)]
    saved = json.loads((directory / MANIFEST).read_text())["backbone"]
    assert saved["architecture"] == type(backbone.model).__name__
    assert saved["pooling"] == backbone.pooling
    assert saved["gguf_sha256"] is None
    assert saved["dtype"] == "float32"


def test_query_is_the_query_layer_of_a_full_pass(family):
    _, backbone = family
    batch = backbone.tokenize(TEXTS)
    with torch.no_grad():
        out = backbone.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
            **backbone.extra_inputs(batch["attention_mask"]),
        )
    expected = backbone.pool(out.hidden_states[backbone.query_layer], batch["attention_mask"])
    assert torch.allclose(backbone.query(TEXTS), expected, atol=1e-5)


def test_query_layer_view_stops_early_and_leaves_the_model_whole(family):
    _, backbone = family
    calls = []
    stack = next(
        m
        for m in backbone.model.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == backbone.num_layers
    )
    before = [dict(layer._forward_hooks) for layer in stack]
    handles = [
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
        for i, layer in enumerate(stack)
    ]
    try:
        fresh = Backbone(backbone.model, backbone.tokenizer, "x", max_length=32, query_layer=1)
        fresh.query(["a dog"])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0]  # only the first layer ran
    assert len(stack) == 2  # the view did not cut the shared model's own layers
    assert [dict(layer._forward_hooks) for layer in stack] == before  # its hook is gone


def test_decoder_last_pooling_is_the_last_real_token(tokenizer):
    backbone = make_backbone("llama", tokenizer, pooling="last")
    batch = backbone.tokenize(TEXTS)
    embeds = backbone.embed(batch["input_ids"])
    with torch.no_grad():
        pooled = backbone.encode(embeds, batch["attention_mask"])
        hidden = backbone.model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"]
        ).last_hidden_state
    lengths = batch["attention_mask"].sum(1) - 1
    assert torch.allclose(pooled, hidden[torch.arange(3), lengths], atol=1e-6)
    assert make_backbone("llama", tokenizer).pooling == "mean"
    with pytest.raises(ContinualError, match="pooling"):
        make_backbone("llama", tokenizer, pooling="max")


def test_missing_pad_token_is_set_to_end_of_text(tokenizer):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    no_pad.eos_token = "[SEP]"
    no_pad.padding_side = "left"
    cls, config = _config("gpt2", len(tokenizer))
    backbone = Backbone(cls(config), no_pad, "tiny-gpt2", max_length=32)
    assert backbone.tokenizer.pad_token == "[SEP]"
    assert backbone.tokenizer.padding_side == "right"
    assert backbone.query(TEXTS).shape == (3, 32)


def test_roberta_position_offset_limits_prompt_plus_input(tokenizer):
    backbone = make_backbone("roberta", tokenizer)
    assert backbone.position_limit == 129  # 130 positions, ids start after padding index 0
    with pytest.raises(ContinualError, match="129 positions"):
        PromptPool(backbone, prompt_length=98)  # 98 + 32 > 129
    PromptPool(backbone, prompt_length=97)


def test_model_without_input_embeddings_is_refused(tokenizer):
    class NoEmbeddings(torch.nn.Module):
        config = _config("llama", 10)[1]

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def get_input_embeddings(self):
            raise NotImplementedError

    with pytest.raises(ContinualError, match="no input embeddings"):
        Backbone(NoEmbeddings(), tokenizer, "none")


def test_pool_refuses_another_pooling_or_architecture(grown, tokenizer):
    _name, backbone, _, _, directory = grown
    other = "mean" if backbone.pooling == "last" else "last"
    repooled = Backbone(
        backbone.model, backbone.tokenizer, backbone.name, max_length=32, pooling=other
    )
    with pytest.raises(PoolFormatError, match="pooling"):
        PromptPool.load(directory, repooled)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["backbone"]["architecture"] = "SomethingElse"
    copy_dir = directory.parent / f"{directory.name}-arch"
    copy_dir.mkdir(exist_ok=True)
    for path in directory.iterdir():
        if path.is_file():
            (copy_dir / path.name).write_bytes(path.read_bytes())
    (copy_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PoolFormatError, match="architecture"):
        PromptPool.load(copy_dir, backbone)


def test_bfloat16_backbone_keeps_prompts_and_heads_float32(tokenizer, synthetic_tasks):
    backbone = make_backbone("llama", tokenizer)
    backbone.model.to(torch.bfloat16)
    assert backbone.dtype == torch.bfloat16
    pool = PromptPool(backbone, prompt_length=4, training=TrainingConfig(epochs=1))
    entry = pool.learn(synthetic_tasks[0], progress=False)
    assert entry.prompt.dtype == entry.head_weight.dtype == torch.float32
    batch = backbone.tokenize(TEXTS)
    features = prompted_features(
        backbone,
        entry.prompt.unsqueeze(0).expand(3, -1, -1),
        batch["input_ids"],
        batch["attention_mask"],
    )
    assert features.dtype == torch.float32
    assert backbone.fingerprint()["dtype"] == "bfloat16"


def test_cli_learns_and_predicts_on_a_decoder_folder(tokenizer, tmp_path, capsys):
    """``continual learn --backbone DIR`` on a saved tiny GPT-2, then predict and evaluate."""
    from continual.cli import main

    folder = tmp_path / "tiny-gpt2"
    backbone = make_backbone("gpt2", tokenizer)
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    rows = [("the red and the pink here", "warm"), ("the blue and the teal now", "cool")] * 6
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    pool = tmp_path / "pool"
    assert (
        main(
            [
                "learn",
                str(pool),
                "--task",
                "colours",
                "--train",
                str(train),
                "--test",
                str(train),
                "--backbone",
                str(folder),
                "--epochs",
                "1",
                "--prompt-length",
                "4",
                "--max-length",
                "32",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    # A local model folder is named again: a pool never loads one by itself.
    assert main(["predict", str(pool), "the red one", "--device", "auto"]) == 2
    assert "--backbone" in capsys.readouterr().err
    assert (
        main(["predict", str(pool), "the red one", "--device", "auto", "--backbone", str(folder)])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["label"] in ("warm", "cool")
    saved = json.loads((pool / MANIFEST).read_text())["backbone"]
    assert saved["architecture"] == "GPT2Model" and saved["pooling"] == "mean"
    assert (
        main(
            [
                "evaluate",
                str(pool),
                "--task",
                "colours",
                "--test",
                str(train),
                "--backbone",
                str(folder),
                "--dtype",
                "bfloat16",
            ]
        )
        == 2
    )  # built in float32
    assert "dtype" in capsys.readouterr().err
