"""Soft prompts: L trainable vectors of the backbone's width, put before the input embeddings.

Prompt tuning (Lester et al. 2021): the backbone stays frozen and only these vectors learn.
How they start matters on small data; three initialisations are offered, as in the paper.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .backbone import Backbone
from .errors import ContinualError

PromptInit = Literal["random", "vocab", "text"]


class SoftPrompt(nn.Module):
    """``length`` trainable vectors (L, H).

    Build one with `SoftPrompt.initialise`; ``prepend`` puts it before a batch of embeddings.

    Example:
        >>> prompt = SoftPrompt.initialise(backbone, 16, "text", text="Classify the topic")
        >>> prompt.vectors.shape
        torch.Size([16, 384])
    """

    def __init__(self, vectors: torch.Tensor) -> None:
        super().__init__()
        if vectors.dim() != 2:
            raise ContinualError(f"prompt vectors must be (L, H), got shape {tuple(vectors.shape)}")
        self.vectors = nn.Parameter(vectors.detach().clone().float())

    @property
    def length(self) -> int:
        return self.vectors.shape[0]

    @classmethod
    def initialise(
        cls,
        backbone: Backbone,
        length: int,
        init: PromptInit = "vocab",
        *,
        text: str | None = None,
        generator: torch.Generator | None = None,
    ) -> SoftPrompt:
        """A new prompt for ``backbone``.

        ``random``: normal vectors scaled to the embedding matrix's spread. ``vocab``: embeddings
        of tokens sampled from the vocabulary (the paper's stronger default). ``text``: the
        embeddings of ``text``'s tokens, repeated to fill ``length``.
        """
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
        return cls(vectors)

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prompt repeated for a batch: (B, L, H)."""
        return self.vectors.unsqueeze(0).expand(batch_size, -1, -1)


def prompted_features(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Features of inputs with a per-row prompt before them: prompts (B, L, H) → (B, H).

    Every row may carry a different prompt, so one forward pass serves a batch that mixes tasks.
    The features average the input's tokens only: the prompt steers them through attention.
    """
    batch, length, _ = prompts.shape
    embeds = torch.cat([prompts, backbone.embed(input_ids)], dim=1)  # (B, L + n, H)
    prompt_mask = torch.ones(
        batch, length, dtype=attention_mask.dtype, device=attention_mask.device
    )
    mask = torch.cat([prompt_mask, attention_mask], dim=1)
    pool_mask = torch.cat([torch.zeros_like(prompt_mask), attention_mask], dim=1)
    return backbone.encode(embeds, mask, pool_mask)
