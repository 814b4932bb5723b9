"""Pooling a model's hidden states (B, n, H) into one feature vector per input (B, H)."""

from __future__ import annotations

from typing import Literal

import torch

Pooling = Literal["mean", "last"]
POOLINGS: tuple[str, ...] = ("mean", "last")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the hidden states (B, n, H) at the positions in ``mask`` (B, n): (B, H)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, n, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last attended position (right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * (mask > 0)).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
