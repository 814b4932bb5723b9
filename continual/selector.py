"""Selectors by name: the registry that builds one from its saved config, the default, and the
oracle (no routing). The interface is `selector_interface.Selector`; the implementations are in
`gaussian_selector` and `similarity_selectors`, re-exported here."""

from __future__ import annotations

from typing import Any

import torch

from .entry import State
from .errors import ContinualError
from .gaussian_selector import (
    GaussianSelector,
    ViewGaussianSelector,
    first_sentence,
    scatter_of,
    summed_scatter,
)
from .selector_interface import UNKNOWN_TASK, Selector
from .similarity_selectors import KeySelector, PrototypeSelector

__all__ = [
    "DEFAULT_SELECTOR",
    "SELECTORS",
    "UNKNOWN_TASK",
    "GaussianSelector",
    "KeySelector",
    "OracleSelector",
    "PrototypeSelector",
    "Selector",
    "ViewGaussianSelector",
    "build_selector",
    "default_selector",
    "first_sentence",
    "scatter_of",
    "summed_scatter",
]


class OracleSelector(Selector):
    """No routing: every input's task must be given (``predict(texts, tasks=...)``).

    For upper bounds: the pool's accuracy with perfect routing.
    """

    name = "oracle"

    def fit_task(self, queries: torch.Tensor, previous: list[State], seed: int = 0) -> State:
        return {}

    def task_scores(self, queries: torch.Tensor, states: list[State]) -> torch.Tensor:
        raise ContinualError(
            "the oracle selector does not route: give every input's task, "
            "predict(texts, tasks=[...])"
        )


DEFAULT_SELECTOR = "gaussian_views"


def default_selector(deep: bool) -> dict[str, Any]:
    """The default selector's settings for a pool whose prompts sit at the input or, ``deep``,
    at the query layer (whose pass has no last layer before the prompt)."""
    return {"name": DEFAULT_SELECTOR, "last_layer": not deep}


SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (
        GaussianSelector,
        ViewGaussianSelector,
        PrototypeSelector,
        KeySelector,
        OracleSelector,
    )
}


def build_selector(config: str | dict[str, Any] | Selector) -> Selector:
    """A selector from its name, its saved config, or as given."""
    if isinstance(config, Selector):
        return config
    if isinstance(config, str):
        config = {"name": config}
    settings = dict(config)
    name = settings.pop("name", None)
    if name not in SELECTORS:
        raise ContinualError(f"unknown selector {name!r}; choose one of {sorted(SELECTORS)}")
    try:
        return SELECTORS[name](**settings)
    except TypeError as error:
        raise ContinualError(f"bad settings for selector {name!r}: {error}") from None
