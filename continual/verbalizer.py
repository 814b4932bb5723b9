"""Verbalizer heads: a task scores its label names with the language model's own output
embeddings (Lester et al. 2021), instead of a trained linear head.

For a decoder LM with last-token features, ``features @ E[label]`` is the LM's next-token logit
of the label's first token: the head needs no training, and a hard prompt (a written
instruction) with it is a zero-shot classifier. The weight is an ordinary (C, H) head, so a
verbalizer task is stored, batched and routed like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .backbone import Backbone
from .errors import ContinualError


def output_embeddings(backbone: Backbone) -> torch.Tensor:
    """The LM's output embedding matrix (V, H): its LM head, or the input embeddings when the
    two are tied (``AutoModel`` loads no LM head; SmolLM2, GPT-2 and Qwen2 tie them)."""
    model: Any = backbone.model
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight
    if getattr(model.config, "tie_word_embeddings", False):
        return backbone.embedding_matrix
    raise ContinualError(
        f"backbone {backbone.name!r} has no output embeddings to score label words with: its "
        "LM head is not tied to the input embeddings (use the linear head)"
    )


def label_token_ids(backbone: Backbone, labels: Sequence[str]) -> list[list[int]]:
    """Each label's tokens as the LM would write it after a space ("Answer: sport")."""
    ids = []
    for label in labels:
        words = label.replace("_", " ").replace("-", " ").strip()
        tokens = backbone.tokenizer(" " + words, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ContinualError(f"label {label!r} has no tokens in the backbone's vocabulary")
        ids.append(list(tokens))
    return ids


def verbalizer_weight(backbone: Backbone, labels: Sequence[str]) -> torch.Tensor:
    """Head weight (C, H), float32, for a backbone whose features are last-token states."""
    if backbone.is_decoder and backbone.pooling != "last":
        raise ContinualError(
            "a verbalizer head scores the LM's next-token logits, which come from the last "
            "token: load the backbone with pooling='last' (--pooling last)"
        )
    return label_word_weight(backbone, labels)


def label_word_weight(backbone: Backbone, labels: Sequence[str]) -> torch.Tensor:
    """(C, H), float32: each label's first-token output embedding, or, where two labels start
    with the same token, the mean over each label's tokens."""
    if not backbone.is_decoder:
        raise ContinualError(
            f"a verbalizer head needs a decoder language model; {backbone.name!r} "
            f"({backbone.architecture}) is an encoder (use the linear head)"
        )
    table = output_embeddings(backbone).detach()
    ids = label_token_ids(backbone, labels)
    firsts = [tokens[0] for tokens in ids]
    if len(set(firsts)) == len(firsts):
        rows = [table[token] for token in firsts]
    else:
        rows = [table[torch.tensor(tokens, device=table.device)].mean(0) for tokens in ids]
    return torch.stack(rows).float()
