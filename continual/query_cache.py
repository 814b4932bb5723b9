"""The backbone's cache of query features: a training set's queries are computed once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch

# (with the last layer, placeholder positions before the input, text)
Key = tuple[bool, int, str]


class QueryCache:
    """Up to ``size`` query feature rows, least recently used dropped first; 0 keeps none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: OrderedDict[Key, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def found(self, keys: Sequence[Key]) -> dict[str, torch.Tensor]:
        """The cached rows of ``keys`` by text, each marked as just used."""
        found: dict[str, torch.Tensor] = {}
        for key in keys:
            if key in self._rows:
                found[key[2]] = self._rows[key]
                self._rows.move_to_end(key)
        return found

    def add(self, rows: Iterable[tuple[Key, torch.Tensor]]) -> None:
        if not self.size:
            return
        self._rows.update(rows)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
