"""Soft prompts: L trainable vectors of the backbone's width, put before the input.

Prompt tuning (Lester et al. 2021): the backbone stays frozen and only these vectors learn.
Two placements:

- ``input``: L vectors (L, H) before the input embeddings, the paper's form.
- ``query_layer``: a deep prompt (D, L, H) from the query layer on (one set of L vectors for
  each of the last D layers, as in P-tuning v2). The layers below carry no prompt, so a mixed
  batch runs them once, routes on their output and finishes with each row's prompt: a routed
  prediction costs one pass, and training never back-propagates through the lower layers.

How they start matters on small data; three initialisations are offered, as in the paper.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .backbone import Backbone
from .errors import ContinualError

PromptInit = Literal["random", "vocab", "text"]
Placement = Literal["input", "query_layer"]
PLACEMENTS: tuple[str, ...] = ("input", "query_layer")


def prompt_shape(
    length: int, placement: str, *, hidden: int, num_layers: int, query_layer: int
) -> tuple[int, ...]:
    """The shape of one task's prompt: (L, H) at the input, (D, L, H) from the query layer.

    Takes the backbone's sizes as numbers, so that a manifest's recorded fingerprint answers
    as a loaded `Backbone` does.
    """
    if placement == "input":
        return (length, hidden)
    if placement == "query_layer":
        return (num_layers - query_layer, length, hidden)
    raise ContinualError(f"unknown placement {placement!r}; use 'input' or 'query_layer'")


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
        if vectors.dim() not in (2, 3):
            raise ContinualError(
                f"prompt vectors must be (L, H) or (D, L, H), got shape {tuple(vectors.shape)}"
            )
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
        placement: Placement = "input",
    ) -> SoftPrompt:
        """A new prompt for ``backbone``.

        ``random``: normal vectors scaled to the embedding matrix's spread. ``vocab``: embeddings
        of tokens sampled from the vocabulary (the paper's stronger default). ``text``: the
        embeddings of ``text``'s tokens, repeated to fill ``length``. For a deep prompt
        (``placement="query_layer"``) each layer's vectors start as those tokens' states at
        that layer (noise: scaled to those states' spread), so every layer starts in range.
        """
        shape = prompt_shape(
            length,
            placement,
            hidden=backbone.hidden_size,
            num_layers=backbone.num_layers,
            query_layer=backbone.query_layer,
        )
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
        if len(shape) == 3:
            vectors = _states_of(backbone, vectors, init == "random", generator)
        return cls(vectors)

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prompt repeated for a batch: (B, L, H) or (B, D, L, H)."""
        return self.vectors.unsqueeze(0).expand(batch_size, *self.vectors.shape)


@torch.no_grad()
def _states_of(
    backbone: Backbone,
    embeds: torch.Tensor,
    noise: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(D, L, H): the states ``embeds`` (L, H) take at the input of each of the last D layers
    when run through the frozen model as a sequence of their own."""
    start = backbone.query_layer
    mask = torch.ones(1, embeds.shape[0], dtype=torch.long, device=embeds.device)
    with backbone.lock:
        states = backbone.model(
            inputs_embeds=embeds.unsqueeze(0).to(backbone.dtype),
            attention_mask=mask,
            output_hidden_states=True,
            **backbone.extra_inputs(mask),
        ).hidden_states
    deep = torch.stack([states[layer][0] for layer in range(start, backbone.num_layers)]).float()
    if noise:
        drawn = torch.randn(deep.shape, generator=generator).to(deep.device)
        deep = drawn * deep.std(dim=(1, 2), keepdim=True)
    return deep


def prompted_features(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    lower: torch.Tensor | None = None,
) -> torch.Tensor:
    """Features of inputs with a per-row prompt: prompts (B, L, H) or (B, D, L, H) → (B, H).

    Every row may carry a different prompt, so one forward pass serves a batch that mixes tasks.
    A 4-d prompt is deep: it enters at the query layer (`Backbone.prompted_hidden`; ``lower``,
    the inputs' saved states there, skips the layers below). The features average the input's
    tokens only: the prompt steers them through attention.
    """
    if prompts.dim() == 4:
        start = backbone.num_layers - prompts.shape[1]
        return backbone.prompted_hidden(
            input_ids, attention_mask, prompts.shape[2], start, lambda _hidden: prompts, lower
        )
    if lower is not None:
        raise ContinualError("saved lower-layer states go with a deep prompt only")
    batch, length, _ = prompts.shape
    embeds = torch.cat([prompts, backbone.embed(input_ids)], dim=1)  # (B, L + n, H)
    prompt_mask = torch.ones(
        batch, length, dtype=attention_mask.dtype, device=attention_mask.device
    )
    mask = torch.cat([prompt_mask, attention_mask], dim=1)
    pool_mask = torch.cat([torch.zeros_like(prompt_mask), attention_mask], dim=1)
    return backbone.encode(embeds, mask, pool_mask)
