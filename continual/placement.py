"""Where a pool's prompts enter the frozen model: `Placement`.

Two placements:

- ``input``: L vectors (L, H) before the input embeddings, the paper's form (Lester et al.).
- ``query_layer``: a deep prompt (D, L, H) from the query layer on (one set of L vectors for
  each of the last D layers, as in P-tuning v2). The layers below carry no prompt, so a mixed
  batch runs them once, routes on their output and finishes with each row's prompt: a routed
  prediction costs one pass, and training never back-propagates through the lower layers.

A `Placement` owns all that differs between them: the prompt's shape, how a prompted pass
runs, where the selector's query is read and how a prompt starts. Nothing else in the package
compares placement names or prompt ranks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .backbone import Backbone
from .errors import ContinualError
from .selector import Selector

PLACEMENTS: tuple[str, ...] = ("input", "query_layer")


class Placement:
    """The prompt at the ``input`` or, ``deep``, from the backbone's query layer on.

    Build one with `Placement.of` (a name or a placement) or `Placement.of_prompt` (a prompt's
    vectors); ``name`` is what a manifest records.
    """

    def __init__(self, name: str) -> None:
        if name not in PLACEMENTS:
            raise ContinualError(f"unknown placement {name!r}; use 'input' or 'query_layer'")
        self.name = name
        self.deep = name == "query_layer"

    @classmethod
    def of(cls, value: str | Placement) -> Placement:
        return value if isinstance(value, Placement) else cls(value)

    @classmethod
    def of_prompt(cls, vectors: torch.Tensor) -> Placement:
        """The placement of one task's prompt vectors: (L, H) input, (D, L, H) deep."""
        if vectors.dim() not in (2, 3):
            raise ContinualError(
                f"prompt vectors must be (L, H) or (D, L, H), got shape {tuple(vectors.shape)}"
            )
        return INPUT if vectors.dim() == 2 else DEEP

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Placement) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return repr(self.name)

    def __str__(self) -> str:
        return self.name

    def prompt_shape(
        self, length: int, *, hidden: int, num_layers: int, query_layer: int
    ) -> tuple[int, ...]:
        """The shape of one task's prompt: (L, H) at the input, (D, L, H) from the query layer.

        Takes the backbone's sizes as numbers, so that a manifest's recorded fingerprint answers
        as a loaded `Backbone` does.
        """
        if self.deep:
            return (num_layers - query_layer, length, hidden)
        return (length, hidden)

    def query_prefix(self, length: int) -> int:
        """Placeholder positions before the input when the query is read: a deep pass routes
        on the query layer's states of an input that carries the prompt's places."""
        return length if self.deep else 0

    def check_backbone(self, backbone: Backbone) -> None:
        """A `ContinualError` where ``backbone`` has no layer to put a deep prompt in at."""
        if self.deep and (backbone.layers is None or backbone.query_layer >= backbone.num_layers):
            raise ContinualError(
                f"placement 'query_layer' needs a layer above the query layer and a findable "
                f"layer list; backbone {backbone.name!r} has query_layer {backbone.query_layer} "
                f"of {backbone.num_layers} layers"
                + ("" if backbone.layers is not None else " and no layer list")
            )

    def check_selector(self, selector: Selector) -> None:
        """A `ContinualError` where ``selector`` reads a query this placement's pass lacks: a
        deep pass has no last layer before the prompt."""
        if self.deep and selector.with_last:
            raise ContinualError(
                f"selector {selector.name!r} routes on the last layer too, which a pass "
                "with the prompt at the query layer does not have before the prompt; use "
                "placement='input' or a selector on the query layer alone"
            )

    def check_input(self, what: str) -> None:
        """A `ContinualError` saying that ``what`` needs prompts before the input."""
        if self.deep:
            raise ContinualError(
                f"{what} needs prompts before the input (placement 'input'), not at the "
                "query layer ('query_layer')"
            )

    def initial_vectors(
        self,
        backbone: Backbone,
        embeds: torch.Tensor,
        noise: bool,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """A new prompt's vectors from its initial embeddings (L, H): themselves at the input;
        for a deep prompt, their states at each of the last D layers (``noise``: random
        vectors scaled to those states' spread), so every layer starts in range."""
        return _states_of(backbone, embeds, noise, generator) if self.deep else embeds

    def features(
        self,
        backbone: Backbone,
        prompts: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lower: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Features of inputs with a per-row prompt: prompts (B, L, H) or (B, D, L, H) → (B, H).

        Every row may carry a different prompt, so one forward pass serves a batch that mixes
        tasks. A deep prompt enters at the query layer (`deep_pass`; ``lower``, the inputs'
        saved states there, skips the layers below). The features average the input's tokens
        only: the prompt steers them through attention.
        """
        if self.deep:
            start = backbone.num_layers - prompts.shape[1]
            return deep_pass(
                backbone,
                input_ids,
                attention_mask,
                prompts.shape[2],
                start,
                lambda _h: prompts,
                lower,
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


INPUT = Placement("input")
DEEP = Placement("query_layer")


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


def _exclusive(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``function`` holding its backbone's ``lock``: deep prompts hook the shared layers
    and narrow their list during a pass (see `Backbone.__init__`)."""

    @functools.wraps(function)
    def locked(backbone: Backbone, *args: Any, **kwargs: Any) -> Any:
        with backbone.lock:
            return function(backbone, *args, **kwargs)

    return locked


@_exclusive
def deep_pass(
    backbone: Backbone,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    length: int,
    start: int,
    prompts_for: Callable[[torch.Tensor], torch.Tensor],
    lower: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pooled features (B, H) of a pass whose prompt enters at layer ``start`` (0-based).

    The input carries ``length`` placeholders (`Backbone.with_placeholders`). At the input of layer
    ``start``, ``prompts_for`` is called once with that layer's input (B, length + n, H) and
    returns each row's deep prompt (B, D, length, H), D = num_layers - start; from then on
    each layer's placeholder states are replaced by that layer's prompt vectors. So the
    prompt may depend on the lower layers' output: that is how one pass both routes (on the
    query layer's states) and runs the routed prompt. Gradients flow to the prompts.

    ``lower`` (B, n, H): the input's states at layer ``start`` from an earlier pass
    (`Backbone.lower_states`); the layers below ``start`` are then not run. They carry no prompt, so
    their output for a text is the same whatever the prompt: a trainer computes it once
    per text instead of every epoch. The layers are skipped by narrowing the model's layer
    list for the duration of the call; the backbone's ``lock`` keeps other passes out meanwhile.
    """
    if backbone.layers is None:
        raise ContinualError(
            f"backbone {backbone.name!r} ({backbone.architecture}): no layer list found to put a "
            "prompt in at a middle layer; use placement='input'"
        )
    if not 0 < start < backbone.num_layers:
        raise ContinualError(f"a deep prompt starts at a layer in 1..{backbone.num_layers - 1}")
    chosen: list[torch.Tensor] = []

    def replace(depth: int) -> Callable[..., tuple]:
        def hook(_module: nn.Module, args: tuple) -> tuple:
            hidden = args[0]
            if lower is not None and depth == 0:
                # The layers below were skipped: what enters here is the embeddings'
                # output, to be replaced by the saved states (placeholders in front).
                hidden = torch.cat([hidden[:, :length], lower.to(hidden.dtype)], dim=1)
            if not chosen:
                chosen.append(prompts_for(hidden))
            prompt = chosen[0][:, depth].to(hidden.dtype)
            return (torch.cat([prompt, hidden[:, length:]], dim=1), *args[1:])

        return hook

    handles = [
        backbone.layers[layer].register_forward_pre_hook(replace(layer - start))
        for layer in range(start, backbone.num_layers)
    ]
    try:
        embeds, mask = backbone.with_placeholders(input_ids, attention_mask, length)
        pool_mask = torch.cat([torch.zeros_like(mask[:, :length]), attention_mask], dim=1)
        with _layers_from(backbone, start) if lower is not None else contextlib.nullcontext():
            return backbone.encode(embeds, mask, pool_mask)
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _layers_from(backbone: Backbone, start: int) -> Iterator[None]:
    """The model's layer list holds only layers ``start`` on while inside (then restored)."""
    assert backbone.layers is not None
    modules = backbone.layers._modules
    saved = list(modules.items())
    modules.clear()
    modules.update((str(i), module) for i, (_, module) in enumerate(saved[start:]))
    try:
        yield
    finally:
        modules.clear()
        modules.update(saved)


def prompted_features(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    lower: torch.Tensor | None = None,
) -> torch.Tensor:
    """`Placement.features` under per-row prompts of either placement: (B, L, H) at the input,
    (B, D, L, H) deep."""
    placement = DEEP if prompts.dim() == 4 else INPUT
    return placement.features(backbone, prompts, input_ids, attention_mask, lower)
