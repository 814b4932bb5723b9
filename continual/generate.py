"""Text-to-text tasks on a frozen language model: batched generation.

A text-to-text entry's soft prompt goes before the input embeddings (before the encoder's input
for T5) and the language model's own output head writes the answer: no task head.

Training (`continual.text_training`) feeds ``[prompt; input; target]`` and scores the
target's tokens only. Generation (`generate`) serves a batch whose rows may each carry another task's
prompt: every row's prompt is gathered once, at the prefill; a decoder's rows are left-padded
with explicit position ids, so every row's next token sits in the last column; the prefill
keeps only that column's logits; each step then feeds one token per row through the KV cache.
Decoding is greedy; a row stops at the end-of-text token, at one of its stop texts, or at its
own ``max_new_tokens``. The loop over steps holds no loop over rows, except to look for stop
texts in the rows that have them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .backbone import Backbone
from .errors import ContinualError


@dataclass
class Generated:
    """One row's answer: the text and the mean probability of its tokens (geometric mean)."""

    text: str
    score: float


def end_of_text_ids(backbone: Backbone) -> list[int]:
    """The token ids that end an answer: the tokenizer's end-of-text, else the model's."""
    token = backbone.tokenizer.eos_token_id
    if token is not None:
        return [int(token)]
    config: Any = backbone.language_model.config if backbone.language_model else None
    found = getattr(config, "eos_token_id", None)
    if found is None:
        return []
    return [int(found)] if isinstance(found, int) else [int(t) for t in found]


def target_token_ids(backbone: Backbone, targets: Sequence[str], limit: int) -> list[list[int]]:
    """Each target's tokens followed by end-of-text, at most ``limit`` of them: what the model
    learns to write."""
    ends = end_of_text_ids(backbone)[:1]
    encoded = backbone.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    return [(list(ids) + ends)[:limit] for ids in encoded]


def default_max_new_tokens(backbone: Backbone, targets: Sequence[str]) -> int:
    """Room for the longest target and its end-of-text token, half as long again (at least 4
    tokens more): an answer longer than any seen in training is cut there."""
    encoded = backbone.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    longest = max((len(ids) for ids in encoded), default=1) + 1
    return longest + max(4, math.ceil(longest / 2))


def decoder_start(backbone: Backbone) -> int:
    """The token an encoder-decoder's decoder starts from: the configured one, else the pad
    token (T5's convention)."""
    model = backbone.language_model
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
    if start is None:
        start = getattr(model.config, "pad_token_id", None)
    if start is None:
        raise ContinualError(
            f"backbone {backbone.name!r}: the encoder-decoder names no decoder_start_token_id"
        )
    return int(start)


def prompted_input(
    backbone: Backbone, prompts: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[prompt; input embeddings]`` (B, L + n, H) and its mask, right-padded."""
    embeds = torch.cat([prompts, backbone.embed(input_ids)], dim=1)
    ones = attention_mask.new_ones(len(input_ids), prompts.shape[1])
    return embeds, torch.cat([ones, attention_mask], dim=1)


@torch.no_grad()
def generate(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: Sequence[int],
    stop: Sequence[Sequence[str]] | None = None,
    sampling: Sampling | None = None,
    beams: int = 1,
) -> list[Generated]:
    """Answers of a batch whose rows may each carry their own prompt (B, L, H): greedy, drawn
    under ``sampling``, or by beam search over ``beams`` beams per row.

    ``input_ids`` and ``attention_mask`` (B, n) as `Backbone.tokenize` gives them (right
    padding); ``max_new_tokens`` and ``stop`` (texts that end an answer) are per row. Greedy
    and beam answers do not depend on the other rows of the batch; sampled ones do (the rows
    draw from one seeded generator in turn). Beam search ends a beam at end-of-text or
    ``max_new_tokens`` only (the answer is then cut at a stop text) and keeps, per row, the
    beam of the highest mean token log-probability.
    """
    backbone.check_generative()
    rows = len(input_ids)
    if rows == 0:
        return []
    if type(beams) is not int or beams < 1:
        raise ContinualError(f"beams must be a positive integer, got {beams!r}")
    if beams > 1 and sampling is not None:
        raise ContinualError("choose beam search or sampling, not both")
    limits = torch.tensor(list(max_new_tokens), device=input_ids.device)
    stops: list[tuple[str, ...]] = [tuple(texts) for texts in (stop or [()] * rows)]
    if beams > 1:  # every row's prompt and input once per beam: (B * beams, ...)
        prompts, input_ids, attention_mask = (
            tensor.repeat_interleave(beams, dim=0)
            for tensor in (prompts, input_ids, attention_mask)
        )
    with backbone.lock:
        steps = _seq2seq_steps if backbone.is_seq2seq else _decoder_steps
        step, state = steps(backbone, prompts, input_ids, attention_mask)
        if beams > 1:
            tokens, scores = _beam_search(backbone, step, state, limits, beams)
        else:
            tokens, scores = _decode(backbone, step, limits, stops, sampling)
    texts = backbone.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return [
        Generated(_cut(text, texts_to_stop), score)
        for text, texts_to_stop, score in zip(texts, stops, scores)
    ]


def _cut(text: str, stop: Sequence[str]) -> str:
    """The answer before its first stop text, without surrounding spaces."""
    for marker in stop:
        at = text.find(marker)
        if at >= 0:
            text = text[:at]
    return text.strip()


@dataclass(frozen=True)
class Sampling:
    """Draw each token instead of taking the likeliest: from the model's distribution at
    ``temperature``, among the ``top_k`` likeliest tokens (None: all), seeded by ``seed``."""

    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise ContinualError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.top_k is not None and (type(self.top_k) is not int or self.top_k < 1):
            raise ContinualError(f"top_k must be a positive integer or None, got {self.top_k!r}")

    def draw(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One token per row (B,) from next-token logits (B, V)."""
        scaled = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            least = scaled.topk(self.top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < least, -math.inf)
        return torch.multinomial(scaled.softmax(-1), 1, generator=generator)[:, 0]


def _decode(
    backbone: Backbone,
    step: Any,
    limits: torch.Tensor,
    stops: list[tuple[str, ...]],
    sampling: Sampling | None,
) -> tuple[list[list[int]], list[float]]:
    """Run ``step`` (last tokens (B,) or None for the prefill → next-token logits (B, V)) until
    every row is done; each row's tokens (end-of-text excluded) and mean token probability
    (under the model's own distribution, whatever the sampling)."""
    rows = len(limits)
    device = limits.device
    ends = torch.tensor(end_of_text_ids(backbone), dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    written = torch.zeros(rows, dtype=torch.long, device=device)  # tokens kept per row
    log_prob = torch.zeros(rows, dtype=torch.float64, device=device)
    scored = torch.zeros(rows, dtype=torch.long, device=device)  # tokens in log_prob
    chosen: list[torch.Tensor] = []
    watch = [i for i, texts in enumerate(stops) if texts]
    draws = None
    if sampling is not None:
        draws = torch.Generator(device=device).manual_seed(sampling.seed)
    logits = step(None)
    for position in range(int(limits.max())):
        log_probs = logits.float().log_softmax(-1)
        if sampling is None or draws is None:
            token = log_probs.argmax(-1)  # (B,)
        else:
            token = sampling.draw(logits, draws)
        live = ~done
        log_prob += torch.where(live, log_probs.gather(1, token[:, None])[:, 0], 0.0).double()
        scored += live.long()
        ended = torch.isin(token, ends)
        written += (live & ~ended).long()
        chosen.append(token)
        done |= ended | (position + 1 >= limits)
        for i in watch:  # rows with stop texts only: decode what they wrote so far
            if not done[i]:
                text = backbone.tokenizer.decode(
                    [int(t[i]) for t in chosen], skip_special_tokens=True
                )
                done[i] = any(marker in text for marker in stops[i])
        if bool(done.all()):
            break
        logits = step(token)
    table = torch.stack(chosen, dim=1).tolist()  # (B, steps)
    counts = written.tolist()
    scores = (log_prob / scored.clamp(min=1).double()).exp().tolist()
    return [row[:count] for row, count in zip(table, counts)], scores


def _beam_search(
    backbone: Backbone, step: Any, state: dict[str, Any], limits: torch.Tensor, width: int
) -> tuple[list[list[int]], list[float]]:
    """Beam search over ``width`` beams per row (``step`` runs B * width rows, each row's beams
    next to each other); each row's best beam's tokens and mean token probability."""
    rows = len(limits)
    device = limits.device
    ends = torch.tensor(end_of_text_ids(backbone), dtype=torch.long, device=device)
    pad = int(backbone.tokenizer.pad_token_id)
    # Only the first beam of each row is live at first: the others would repeat it.
    scores = torch.full((rows, width), -math.inf, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    limit = limits.repeat_interleave(width)  # (B * W,)
    done = torch.zeros(rows * width, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows * width, dtype=torch.long, device=device)  # tokens scored
    history = torch.zeros(rows * width, 0, dtype=torch.long, device=device)
    first = torch.arange(rows, device=device)[:, None] * width  # each row's first beam
    logits = step(None)
    for _ in range(int(limits.max())):
        log_probs = logits.double().log_softmax(-1)  # (B * W, V)
        vocabulary = log_probs.shape[1]
        # A finished beam goes on with padding at no cost, as one candidate, not V.
        still = torch.full_like(log_probs, -math.inf)
        still[:, pad] = 0.0
        log_probs = torch.where(done[:, None], still, log_probs)
        total = (scores.reshape(-1, 1) + log_probs).view(rows, width * vocabulary)
        scores, chosen = total.topk(width, dim=1)  # (B, W)
        source = (chosen // vocabulary + first).view(-1)  # the beam each new one extends
        token = (chosen % vocabulary).view(-1)
        history = torch.cat([history[source], token[:, None]], dim=1)
        was_done = done[source]
        lengths = lengths[source] + (~was_done).long()
        done = was_done | torch.isin(token, ends) | (lengths >= limit)
        state["cache"].reorder_cache(source)
        if bool(done.all()):
            break
        logits = step(token)
    mean = (scores.view(-1) / lengths.clamp(min=1)).view(rows, width)
    best = (mean.argmax(1) + first[:, 0]).tolist()
    table, counts = history.tolist(), lengths.tolist()
    ended = set(end_of_text_ids(backbone))
    tokens = []
    for index in best:
        kept = table[index][: counts[index]]
        tokens.append(kept[:-1] if kept and kept[-1] in ended else kept)
    return tokens, mean.max(1).values.exp().tolist()


def _decoder_steps(
    backbone: Backbone, prompts: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> Any:
    """The step function of a decoder LM over ``[padding; prompt; input]`` rows, and its state
    (``state["cache"]``: the KV cache)."""
    model = backbone.language_model
    embeds, mask = prompted_input(backbone, prompts, input_ids, attention_mask)
    # Right padding → left padding: shift each row right by its padding, so that every row's
    # last token is in the last column and every new token goes in the same column for all.
    width = embeds.shape[1]
    shift = width - mask.sum(1, keepdim=True)  # (B, 1)
    source = torch.arange(width, device=mask.device)[None] - shift  # (B, W)
    attended = source >= 0
    index = source.clamp(min=0)
    embeds = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[2]))
    mask = attended.long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    state: dict[str, Any] = {"mask": mask, "position": positions[:, -1:], "cache": None}
    keep: dict[str, Any] = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        keep["logits_to_keep"] = 1  # the prefill needs the last column's logits only

    def step(token: torch.Tensor | None) -> torch.Tensor:
        if token is None:
            out = model(
                inputs_embeds=embeds.to(backbone.dtype),
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **keep,
            )
        else:
            state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(token), 1)], 1)
            state["position"] = state["position"] + 1
            out = model(
                inputs_embeds=backbone.embed(token[:, None]).to(backbone.dtype),
                attention_mask=state["mask"],
                position_ids=state["position"],
                cache=state["cache"],
                use_cache=True,
            )
        state["cache"] = out.cache
        return out.logits[:, -1]

    return step, state


def _seq2seq_steps(
    backbone: Backbone, prompts: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> Any:
    """The step function of an encoder-decoder (the encoder runs once, on ``[prompt; input]``)
    and its state (``state["cache"]``: the decoder's KV cache)."""
    model = backbone.language_model
    embeds, mask = prompted_input(backbone, prompts, input_ids, attention_mask)
    encoded = model.get_encoder()(inputs_embeds=embeds.to(backbone.dtype), attention_mask=mask)
    start = torch.full((len(input_ids), 1), decoder_start(backbone), device=input_ids.device)
    state: dict[str, Any] = {"cache": None}

    def step(token: torch.Tensor | None) -> torch.Tensor:
        out = model(
            encoder_outputs=encoded,
            attention_mask=mask,
            decoder_input_ids=start if token is None else token[:, None],
            cache=state["cache"],
            use_cache=True,
        )
        state["cache"] = out.cache
        return out.logits[:, -1]

    return step, state
