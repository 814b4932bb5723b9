"""A causal language model for the generative baselines: teacher-forced loss and greedy decoding.

Every row may carry its own soft prompt (vectors placed before its token embeddings), so one
function serves a written prompt (no vectors), a shared soft prompt, and a fine-tuned copy of the
model. Decoding pads on the left, passes explicit position ids (a left-padded row's first real
token is at position 0, as when it runs alone), keeps only the last position's logits in the
prefill (a long written prompt would otherwise hold a vocabulary-wide row per token) and
extends the KV cache one token at a time; each row stops at end of text, at a newline or after
``max_new_tokens``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ContinualError


@dataclass
class LanguageModel:
    """A Hugging Face causal LM (``AutoModelForCausalLM``) and its tokenizer."""

    model: Any
    tokenizer: Any
    name: str

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> LanguageModel:
        """Load a hub name, a folder or a ``.gguf`` file (dequantized to float32), frozen."""
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        options: dict[str, Any] = {}
        path: str | os.PathLike = name_or_path
        if str(name_or_path).lower().endswith(".gguf"):
            gguf = Path(name_or_path)
            path, options = gguf.resolve().parent, {"gguf_file": gguf.name}
        else:
            options = {"use_safetensors": True}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **options)
            options.pop("use_safetensors", None)
            tokenizer = AutoTokenizer.from_pretrained(path, **options)
        except (OSError, ValueError) as error:
            raise ContinualError(
                f"cannot load language model {str(name_or_path)!r}: {error}"
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        model.eval()  # float32 already (a GGUF-dequantized model refuses .float())
        model.requires_grad_(False)
        if tokenizer.eos_token_id is None:
            raise ContinualError(f"{name_or_path}: the tokenizer has no end-of-text token")
        return cls(model, tokenizer, str(name_or_path))

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def width(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    def ids(self, text: str, max_tokens: int | None = None) -> list[int]:
        """``text``'s token ids without special tokens, cut to the first ``max_tokens``."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(ids[:max_tokens] if max_tokens is not None else ids)

    def chat_ids(self, turns: Sequence[tuple[str, str]]) -> list[int]:
        """The chat template over (user, assistant) turns, the last assistant reply left open."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            text = "".join(f"{user}\n{reply}\n" for user, reply in turns[:-1])
            return self.ids(text + turns[-1][0] + "\n")
        messages = []
        for user, reply in turns:
            messages.append({"role": "user", "content": user})
            if reply:
                messages.append({"role": "assistant", "content": reply})
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def _left_padded(
    embed: nn.Embedding,
    prefixes: Sequence[torch.Tensor | None],
    rows: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings (B, T, H) of [prefix ; tokens] per row, padded on the left, with the mask
    (B, T) and position ids (B, T) that a row alone would have."""
    device = embed.weight.device
    pieces = []
    for prefix, ids in zip(prefixes, rows, strict=True):
        tokens = embed(torch.tensor(list(ids), dtype=torch.long, device=device))  # (L, H)
        pieces.append(tokens if prefix is None else torch.cat([prefix.to(tokens.dtype), tokens]))
    longest = max(piece.shape[0] for piece in pieces)
    width = pieces[0].shape[1]
    embeddings = pieces[0].new_zeros(len(pieces), longest, width)
    mask = torch.zeros(len(pieces), longest, dtype=torch.long, device=device)
    for row, piece in enumerate(pieces):
        embeddings[row, longest - piece.shape[0] :] = piece
        mask[row, longest - piece.shape[0] :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return embeddings, mask, positions


@torch.no_grad()
def generate(
    lm: LanguageModel,
    rows: Sequence[Sequence[int]],
    *,
    prefixes: Sequence[torch.Tensor | None] | None = None,
    max_new_tokens: int | Sequence[int] = 16,
    stop_at_newline: bool = True,
) -> list[list[int]]:
    """Greedy continuations of each row's tokens (after its prefix vectors, if any).

    Returns each row's new token ids, without the end-of-text token that stopped it.
    """
    if not rows:
        return []
    model = lm.model
    limits = [max_new_tokens] * len(rows) if isinstance(max_new_tokens, int) else max_new_tokens
    embed = model.get_input_embeddings()
    embeddings, mask, positions = _left_padded(embed, prefixes or [None] * len(rows), rows)
    newline = set(lm.ids("\n")) if stop_at_newline else set()
    out = model(
        inputs_embeds=embeddings,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    outputs: list[list[int]] = [[] for _ in rows]
    done = [limit <= 0 for limit in limits]
    for step in range(max(limits)):
        token = out.logits[:, -1].argmax(-1)  # (B,)
        for row, value in enumerate(token.tolist()):
            if done[row]:
                continue
            if value == lm.eos_id or value in newline:
                done[row] = True
            else:
                outputs[row].append(value)
                done[row] = len(outputs[row]) >= limits[row]
        if all(done) or step == max(limits) - 1:
            break
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
        # Newer transformers name the KV cache ``cache``; older ones ``past_key_values``.
        key = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{key: getattr(out, key)},
        )
    return outputs


def target_loss(
    lm: LanguageModel,
    rows: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    *,
    prefixes: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each row's target tokens (end of text appended) given its prefix
    and input tokens: teacher forcing, loss on the target tokens only."""
    model = lm.model
    embed = model.get_input_embeddings()
    device = embed.weight.device
    pieces, labels = [], []
    for row, (ids, target) in enumerate(zip(rows, targets, strict=True)):
        answer = list(target) + [lm.eos_id]
        tokens = embed(torch.tensor(list(ids) + answer, dtype=torch.long, device=device))
        prefix = prefixes[row] if prefixes is not None else None
        before = len(ids) + (0 if prefix is None else prefix.shape[0])
        pieces.append(tokens if prefix is None else torch.cat([prefix, tokens]))
        labels.append([-100] * before + answer)
    longest = max(piece.shape[0] for piece in pieces)
    # Right padding: causal attention keeps every real token from seeing the padding after it.
    embeddings = pieces[0].new_zeros(len(pieces), longest, pieces[0].shape[1])
    mask = torch.zeros(len(pieces), longest, dtype=torch.long, device=device)
    label_ids = torch.full((len(pieces), longest), -100, dtype=torch.long, device=device)
    for row, piece in enumerate(pieces):
        embeddings[row, : piece.shape[0]] = piece
        mask[row, : piece.shape[0]] = 1
        label_ids[row, : len(labels[row])] = torch.tensor(labels[row], device=device)
    hidden = model.base_model(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
    # Position t predicts token t + 1; the vocabulary-wide head runs on target positions only.
    wanted = label_ids[:, 1:] != -100  # (B, T - 1)
    logits = model.get_output_embeddings()(hidden[:, :-1][wanted])  # (N, V)
    return nn.functional.cross_entropy(logits, label_ids[:, 1:][wanted])
