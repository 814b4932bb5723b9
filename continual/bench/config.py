"""What defines a benchmark run, and the presets (`QUICK`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass
class BenchmarkConfig:
    """Everything that defines a run; recorded in results.json.

    Attributes:
        sequence: a built-in sequence (``text4``) or a TOML file of tasks.
        methods: names from `continual.bench.methods.METHODS`, run in this order.
        orders: task orders to average over (the given order first, then seeded shuffles).
        seed: seeds data splits, orders and every method.
        train_per_label, test_per_label, validation_per_label: corpus split sizes.
        max_length: tokens per input (prompt not counted).
        query_layer: the backbone layer the selectors route on.
        prompt_length: soft prompt vectors per task.
        placement: where the pool's prompts go: ``input`` or ``query_layer`` (deep from the
            query layer on, routed in the same pass); see `continual.prompt`.
        epochs: prompt-tuning epochs at most (the probe trains 4x as many).
        finetune_epochs: full fine-tuning epochs.
        batch_size: examples per step.
        backbone: a HF model name, folder or ``.gguf`` file (default: the packaged MiniLM).
        device: where the backbone runs (``cpu``, ``cuda``, ``cuda:1``, ``auto``).
        dtype: the frozen backbone's precision (``float32``, ``bfloat16``, ``float16``).
    """

    sequence: str = "text4"
    methods: tuple[str, ...] = ()
    orders: int = 1
    seed: int = 0
    train_per_label: int | None = 64
    test_per_label: int | None = 50
    validation_per_label: int = 16
    max_length: int = 64
    query_layer: int | None = 3
    prompt_length: int = 16
    placement: str = "input"
    epochs: int = 4
    finetune_epochs: int = 2
    batch_size: int = 32
    backbone: str | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    def shaping_results(self) -> dict[str, Any]:
        """The settings that shape results (methods may be added to a finished run, and the
        device is where it ran, not what it measured)."""
        return shaping_of(self.to_dict())


def shaping_of(config: dict[str, Any]) -> dict[str, Any]:
    """`BenchmarkConfig.shaping_results` of a config as recorded in results.json."""
    shaping = {key: value for key, value in config.items() if key not in ("methods", "device")}
    # Left out at their defaults, so results made before they existed still resume.
    for key, default in (("backbone", None), ("dtype", "float32"), ("placement", "input")):
        if shaping.get(key, default) == default:
            shaping.pop(key, None)
    return shaping


# A first look in under 3 minutes on 2 CPU cores: small data, and the pool against the
# baselines that matter most (sequential fine-tuning, the probe, joint, the best Avalanche one).
QUICK_METHODS = (
    "prompt-pool",
    "prompt-pool-oracle",
    "prompt-pool-prototypes",
    "prompt-pool-keys",
    "seq-finetune",
    "linear-probe",
    "joint",
    "replay",
)


def quick(config: BenchmarkConfig) -> BenchmarkConfig:
    """``config`` with the quick preset's sizes and methods."""
    return replace(
        config,
        train_per_label=20,
        test_per_label=20,
        validation_per_label=8,
        epochs=3,
        finetune_epochs=2,
        orders=1,
        max_length=48,
        methods=QUICK_METHODS,
    )
