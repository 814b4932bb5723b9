"""Optional features and the extra that installs each.

The core install (torch, transformers, safetensors, numpy, scikit-learn, tqdm, the packaged
MiniLM) learns, predicts, saves and loads. The Avalanche integration, the HTTP server and the
benchmark harness need more; each checks for its packages before importing them, so that a
missing one is one line naming the ``pip install`` that brings it, not a traceback.
"""

from __future__ import annotations

from importlib.util import find_spec

from .errors import ContinualError

# extra -> the importable packages it brings (a .gguf backbone names its extra in backbone.py)
EXTRAS: dict[str, tuple[str, ...]] = {
    "avalanche": ("avalanche", "torchvision"),
    "serve": ("fastapi", "uvicorn", "fastapi_offline"),
    "bench": ("matplotlib", "avalanche"),
    "generate": ("sacrebleu", "rouge_score"),  # the chrf and rouge_l task metrics
}


class MissingExtraError(ContinualError, ImportError):
    """An optional feature's packages are not installed (an `ImportError` too)."""


def require(extra: str, feature: str) -> None:
    """Raise `MissingExtraError` naming ``pip install 'continual[extra]'`` when a package of
    ``extra`` is missing; ``feature`` says what needs it (e.g. "continual serve")."""
    missing = [name for name in EXTRAS[extra] if not _installed(name)]
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)}, which this install lacks: "
            f"pip install 'continual[{extra}]'"
        )


def _installed(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: blocked
        return False
