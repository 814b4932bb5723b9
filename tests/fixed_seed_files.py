"""The files of tiny pools trained at a fixed seed, as sha256 digests: run it on two commits and
compare the outputs to show that a change left what the pool learns and stores byte-identical.

Three pools on tiny random BERTs (two or three synthetic tasks each): the default selector with
the prompt at the input, k-means prototypes without a validation split, and the prompt at the
query layer. Where the Gaussian selector has a ``rank`` setting, the pools use its dense form
with shrinkage 0.3 (what the default stored before low-rank statistics), so commits on either
side of that change compare. Training seconds are dropped from the manifest before hashing;
the selector's config is shown on its own (a version may record a setting more).

    PYTHONPATH=CHECKOUT python tests/fixed_seed_files.py > files.json

(Not a test: pytest collects test_*.py only; conftest is imported from this folder.)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
from conftest import ANIMALS, COLOURS, synthetic_pairs, tiny_bert
from transformers import AutoTokenizer

import continual
from continual import Backbone, PromptPool, Task, TrainingConfig
from continual.selector import ViewGaussianSelector

RUNS = {
    "input-gaussian": dict(layers=2, placement="input", selector=None, epochs=4, patience=1),
    "input-prototypes-noval": dict(
        layers=2, placement="input", selector="prototypes", epochs=2, patience=2
    ),
    "deep": dict(layers=4, placement="query_layer", selector=None, epochs=3, patience=1),
}


def selector(name: str | None, deep: bool) -> Any:
    if name is None and "rank" in inspect.signature(ViewGaussianSelector.__init__).parameters:
        return ViewGaussianSelector(shrinkage=0.3, rank=None, last_layer=not deep)
    return name


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    torch.set_num_threads(1)
    print("continual from", continual.__file__, file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(continual.backbone.default_model_path())
    colours = Task.from_pairs("colours", synthetic_pairs(COLOURS, 40, seed=1), seed=0)
    animals = Task.from_pairs("animals", synthetic_pairs(ANIMALS, 40, seed=2), seed=0)
    no_validation = Task("novalid", train=list(colours.train), test=list(colours.test))
    out = {}
    for name, run in RUNS.items():
        backbone = Backbone(
            tiny_bert(tokenizer, 0, layers=run["layers"]), tokenizer, "tiny-bert", max_length=32
        )
        pool = PromptPool(
            backbone,
            prompt_length=4,
            placement=run["placement"],
            selector=selector(run["selector"], run["placement"] == "query_layer"),
            training=TrainingConfig(epochs=run["epochs"], batch_size=16, patience=run["patience"]),
        )
        pool.learn(colours, seed=3, progress=False)
        pool.learn(animals, seed=4, progress=False)
        if name.startswith("input-prototypes"):
            pool.learn(no_validation, seed=5, progress=False)
        folder = Path(tempfile.mkdtemp()) / name
        pool.save(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        for task in manifest["tasks"]:
            task["stats"].pop("train_seconds", None)
        rest = {key: value for key, value in manifest.items() if key != "selector"}
        out[name] = {
            "manifest_without_selector": digest(json.dumps(rest, sort_keys=True).encode()),
            "selector": manifest["selector"],
            "files": {
                str(path.relative_to(folder)): digest(path.read_bytes())
                for path in sorted(folder.rglob("*"))
                if path.is_file() and path.name not in ("manifest.json", ".lock")
            },
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
