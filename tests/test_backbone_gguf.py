"""GGUF files, devices and precision: one line and exit 2 for what cannot load."""

from __future__ import annotations

import pytest
import torch

from continual import Backbone, ContinualError
from continual.backbone import resolve_device, resolve_dtype
from continual.cli import main


def write_csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


@pytest.fixture
def train_csv(tmp_path):
    return write_csv(tmp_path / "train.csv", [("red things", "warm"), ("blue sea", "cool")] * 5)


def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_damaged_gguf_is_one_line_and_exit_2(tmp_path, train_csv, capsys):
    damaged = tmp_path / "model.gguf"
    damaged.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    code, err = run_cli(
        [
            "learn",
            str(tmp_path / "pool"),
            "--task",
            "t",
            "--train",
            str(train_csv),
            "--backbone",
            str(damaged),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "model.gguf" in err


def test_unknown_gguf_architecture_is_one_line_and_exit_2(tmp_path, train_csv, capsys):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-architecture")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, err = run_cli(
        [
            "learn",
            str(tmp_path / "pool"),
            "--task",
            "t",
            "--train",
            str(train_csv),
            "--backbone",
            str(path),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2 and "\n" not in err and "odd.gguf" in err


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ContinualError, match="not found"):
        Backbone.load(tmp_path / "absent.gguf")


def test_devices_and_dtypes_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ContinualError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ContinualError, match="device"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ContinualError, match="no CUDA"):
            resolve_device("cuda:1")


def test_cli_refuses_a_missing_gpu_in_one_line(tmp_path, train_csv, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = run_cli(
        [
            "learn",
            str(tmp_path / "pool"),
            "--task",
            "t",
            "--train",
            str(train_csv),
            "--device",
            "cuda",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2 and "CUDA" in err and "\n" not in err


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pool_learned_on_gpu_loads_on_cpu(tiny_backbone, synthetic_tasks, tmp_path, dtype):
    import copy

    from continual import PromptPool, TrainingConfig

    model = copy.deepcopy(tiny_backbone.model).to("cuda", dtype)
    gpu = Backbone(model, tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    pool = PromptPool(gpu, prompt_length=4, training=TrainingConfig(epochs=1))
    entry = pool.learn(synthetic_tasks[0], progress=False)
    assert entry.prompt.device.type == "cpu" and entry.prompt.dtype == torch.float32
    pool.save(tmp_path)
    cpu = Backbone(copy.deepcopy(model).cpu(), tiny_backbone.tokenizer, "tiny-bert", max_length=32)
    loaded = PromptPool.load(tmp_path, cpu)
    texts = [text for text, _ in synthetic_tasks[0].test]
    assert [p.label for p in loaded.predict(texts)][:5] is not None
    assert loaded.backbone.device.type == "cpu"
