"""Looking inside soft prompts and routing decisions.

Soft prompts are vectors, not words. Three views make them less opaque: the vocabulary tokens
nearest to each prompt vector, how similar the tasks' prompts are to each other, and, for one
input, how well it matched every task and why it went where it went.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .format import pool_has, quote_name
from .pool import PromptPool


def nearest_tokens(pool: PromptPool, task: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each vector of ``task``'s prompt, the ``k`` vocabulary tokens nearest by cosine.

    Only for prompts at the input: a deep prompt's vectors are hidden states of middle layers,
    which vocabulary embeddings do not describe.
    """
    entry = pool.entries[_index(pool, task)]
    if pool.placement.deep:
        from .errors import TaskDataError

        raise TaskDataError(
            f"task {task!r} has a deep prompt (placement 'query_layer'): its vectors live in "
            "middle layers, not in the vocabulary's embedding space, so nearest tokens would "
            "mean nothing; task similarity and routing explanations still apply"
        )
    table = F.normalize(pool.backbone.embedding_matrix.detach().float(), dim=1)  # (V, H)
    similarity = F.normalize(entry.prompt.float().to(table.device), dim=1) @ table.T  # (L, V)
    values, ids = similarity.topk(k, dim=1)
    tokenizer = pool.backbone.tokenizer
    return [
        [
            (tokenizer.convert_ids_to_tokens(int(i)), round(float(v), 3))
            for v, i in zip(row_v, row_i)
        ]
        for row_v, row_i in zip(values, ids)
    ]


def prompt_similarity(pool: PromptPool) -> torch.Tensor:
    """Cosine similarity (T, T) between tasks' prompts, each flattened to one vector."""
    if not pool.entries:
        from .errors import TaskDataError

        raise TaskDataError("the pool has no task yet: learn one before explaining it")
    flat = torch.stack([entry.prompt.flatten() for entry in pool.entries]).float()
    normed = F.normalize(flat, dim=1)
    return normed @ normed.T


def explain_routing(pool: PromptPool, texts: Sequence[str]) -> list[dict]:
    """Per text: each task's match score, the chosen task, its margin over the runner-up,
    and the final label and its probability."""
    scores = pool.task_scores(texts)  # (B, T)
    predictions = pool.predict(list(texts))
    explained = []
    for text, row, prediction in zip(texts, scores, predictions):
        ranked = sorted(zip(pool.tasks, row.tolist()), key=lambda pair: -pair[1])
        margin = ranked[0][1] - ranked[1][1] if len(ranked) > 1 else None
        explained.append(
            {
                "text": text,
                "task": prediction.task,
                "label": prediction.label,
                "score": round(prediction.score, 4),
                "routing": {name: round(value, 4) for name, value in ranked},
                "margin": None if margin is None else round(margin, 4),
            }
        )
    return explained


def _index(pool: PromptPool, task: str) -> int:
    from .errors import TaskDataError

    if task not in pool.tasks:
        raise TaskDataError(f"task {quote_name(task)} is not in the pool; {pool_has(pool.tasks)}")
    return pool.tasks.index(task)
