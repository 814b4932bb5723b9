"""The real SmolLM2-135M GGUF, where ``$CONTINUAL_SMOLLM2_GGUF`` names it (slow: ~40 s load)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from continual import Backbone

GGUF = os.environ.get("CONTINUAL_SMOLLM2_GGUF")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GGUF, reason="set CONTINUAL_SMOLLM2_GGUF to a .gguf file"),
]


def test_smollm2_gguf_loads_as_a_decoder_with_its_digest():
    backbone = Backbone.load(GGUF, max_length=32)
    fingerprint = backbone.fingerprint()
    assert fingerprint["architecture"] == "LlamaModel" and backbone.is_decoder
    assert fingerprint["gguf_sha256"] == hashlib.sha256(Path(str(GGUF)).read_bytes()).hexdigest()
    assert fingerprint["num_layers"] == 30 and backbone.query_layer == 15
    assert backbone.query(["Shares rose"]).shape == (1, backbone.hidden_size)
