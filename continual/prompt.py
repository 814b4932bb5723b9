"""Soft prompts: L trainable vectors of the backbone's width, put before the input.

Prompt tuning (Lester et al. 2021): the backbone stays frozen and only these vectors learn.
A prompt sits before the input (L, H) or, deep, in each layer from the query layer on
(D, L, H): see `continual.placement`.

How they start matters on small data; three initialisations are offered, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .backbone import Backbone
from .errors import ContinualError
from .placement import DEEP, Placement

PromptInit = Literal["random", "vocab", "text"]

# Saved lower-layer states take (tokens x hidden) numbers per text; above this many bytes for
# a task they are not kept and training runs every layer, as it would without them.
LOWER_STATES_BYTES = 1 << 30


class SoftPrompt(nn.Module):
    """``length`` trainable vectors (L, H), or (D, L, H) for a deep prompt.

    Build one with `SoftPrompt.initialise`; calling it repeats it for a batch.

    Examples:
        >>> from continual import Backbone
        >>> backbone = Backbone.load()
        >>> prompt = SoftPrompt.initialise(backbone, 16, "text", text="Classify the topic")
        >>> prompt.vectors.shape
        torch.Size([16, 384])
    """

    def __init__(self, vectors: torch.Tensor) -> None:
        super().__init__()
        self.placement = Placement.of_prompt(vectors)
        self.vectors = nn.Parameter(vectors.detach().clone().float())

    @property
    def length(self) -> int:
        return self.vectors.shape[-2]

    @classmethod
    def initialise(
        cls,
        backbone: Backbone,
        length: int,
        init: PromptInit = "vocab",
        *,
        text: str | None = None,
        generator: torch.Generator | None = None,
        placement: str | Placement = "input",
    ) -> SoftPrompt:
        """A new prompt for ``backbone``.

        ``random``: normal vectors scaled to the embedding matrix's spread. ``vocab``: embeddings
        of tokens sampled from the vocabulary (the paper's stronger default). ``text``: the
        embeddings of ``text``'s tokens, repeated to fill ``length``. For a deep prompt
        (``placement="query_layer"``) each layer's vectors start as those tokens' states at
        that layer (noise: scaled to those states' spread), so every layer starts in range.
        """
        placement = Placement.of(placement)
        if length < 1:
            raise ContinualError(f"prompt length must be at least 1, got {length}")
        table = backbone.embedding_matrix.detach()  # (V, H)
        if init == "random":
            noise = torch.randn(length, table.shape[1], generator=generator)
            vectors = noise.to(table.device) * table.std()
        elif init == "vocab":
            # Skip the first 1000 ids: in BERT vocabularies they are special and unused tokens.
            low = 1000 if table.shape[0] > 2000 else 0
            ids = torch.randint(low, table.shape[0], (length,), generator=generator).to(
                table.device
            )
            vectors = table[ids]
        elif init == "text":
            if not text or not text.strip():
                raise ContinualError("prompt init 'text' needs a non-empty text")
            ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ContinualError(f"prompt text {text!r} has no tokens")
            ids = (ids * (length // len(ids) + 1))[:length]
            vectors = table[torch.tensor(ids)]
        else:
            raise ContinualError(f"unknown prompt init {init!r}; use 'random', 'vocab' or 'text'")
        return cls(placement.initial_vectors(backbone, vectors, init == "random", generator))

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prompt repeated for a batch: (B, L, H) or (B, D, L, H)."""
        return self.vectors.unsqueeze(0).expand(batch_size, *self.vectors.shape)


class LowerStates:
    """Each text's states at a deep prompt's first layer, computed once for the whole training.

    The layers below a deep prompt see only the text and placeholders that every prompt shares
    (`Backbone.with_placeholders`), so their output for a text is the same in every epoch;
    with it saved, a step runs (forward and backward) only the layers the prompt is in.
    Measured on the packaged MiniLM (query layer 3 of 6): see benchmarks/perf.py.
    """

    def __init__(self, backbone: Backbone, rows: dict[str, torch.Tensor]) -> None:
        self.backbone = backbone
        self.rows = rows

    @classmethod
    def build(
        cls, backbone: Backbone, prompt: SoftPrompt, texts: Sequence[str], batch_size: int
    ) -> LowerStates | None:
        """The states of ``texts``; None where saving them is not worth it or not exact."""
        if not prompt.placement.deep or not texts:
            return None
        unique = list(dict.fromkeys(texts))
        tokens = backbone.tokenizer(unique, truncation=True, max_length=backbone.max_length)
        itemsize = torch.finfo(backbone.dtype).bits // 8
        size = sum(len(ids) for ids in tokens["input_ids"]) * backbone.hidden_size * itemsize
        if size > LOWER_STATES_BYTES:
            return None
        start = backbone.num_layers - prompt.vectors.shape[0]
        rows: dict[str, torch.Tensor] = {}
        for first in range(0, len(unique), batch_size):
            chunk = unique[first : first + batch_size]
            batch = backbone.tokenize(chunk)
            states = backbone.lower_states(
                batch["input_ids"], batch["attention_mask"], prompt.length, start
            )
            for text, row, count in zip(chunk, states, batch["attention_mask"].sum(1).tolist()):
                rows[text] = row[: int(count)].clone()  # its own storage: padding not kept
        saved = cls(backbone, rows)
        return saved if saved._agrees(prompt, unique[:batch_size]) else None

    def batch(self, texts: Sequence[str], attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, n, H) for a batch tokenized to ``attention_mask`` (B, n); padding rows are
        zeros (their keys are masked out and their outputs are not pooled)."""
        first = self.rows[texts[0]]
        out = first.new_zeros(len(texts), attention_mask.shape[1], first.shape[-1])
        for i, text in enumerate(texts):
            row = self.rows[text]
            out[i, : row.shape[0]] = row
        return out

    @torch.no_grad()
    def _agrees(self, prompt: SoftPrompt, texts: Sequence[str]) -> bool:
        """Whether a pass from the saved states gives the full pass's features. A family whose
        lower layers hand more than hidden states up (T5's position bias from its first
        block) would not: its training then runs every layer."""
        batch = self.backbone.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        prompts = prompt(len(texts))
        try:
            skipped = DEEP.features(self.backbone, prompts, ids, mask, self.batch(texts, mask))
        except Exception:
            return False  # the narrowed layer list is not what this model's forward expects
        full = DEEP.features(self.backbone, prompts, ids, mask)
        tolerance = 1e-3 if self.backbone.dtype == torch.float32 else 3e-2
        scale = float(full.abs().max())
        return bool((skipped - full).abs().max() <= tolerance * max(scale, 1.0))
