"""Hypothesis properties that count the examples they ran, and where counts are recorded.

When a module finishes, its counts are compared with each property's ``max_examples``, so the
figures the guarantees page quotes (how many generated inputs a run checks) are measured, not assumed.
With ``$CONTINUAL_COUNTS`` set to a file, every count is appended there as one JSON line;
``benchmarks/guarantees.py`` runs the suites several times that way and writes the figures.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter

from hypothesis import given, settings


class CountedProperties:
    """``@prop(max_examples, *strategies, **named)``: ``@settings(...) @given(...)``, counted."""

    def __init__(self, **settings_kwargs) -> None:
        self.settings = settings_kwargs
        self.runs: Counter = Counter()  # property name -> examples run
        self.expected: dict[str, int] = {}  # property name -> max_examples

    def __call__(self, max_examples: int, *strategies, **named):
        def decorate(test):
            @functools.wraps(test)
            def counted(*args, **kwargs):
                self.runs[test.__name__] += 1
                return test(*args, **kwargs)

            self.expected[test.__name__] = max_examples
            return settings(max_examples=max_examples, **self.settings)(
                given(*strategies, **named)(counted)
            )

        return decorate

    def check_every_property_ran(self, module: str) -> None:
        """Assert every property that ran reached its max_examples, and record the counts.

        Called when a module's tests are done (a module-scoped fixture's teardown), so it does
        not depend on test order; does nothing when no property of the module ran.
        """
        ran = {name: self.runs[name] for name in self.expected if self.runs[name]}
        if not ran:
            return
        short = {
            name: (count, self.expected[name])
            for name, count in ran.items()
            if count < self.expected[name]
        }
        assert not short, f"properties that ran fewer examples than asked: {short}"
        record_counts(module, {"examples": sum(ran.values()), **ran})


def record_counts(what: str, counts: dict) -> None:
    """Append ``counts`` as one JSON line to ``$CONTINUAL_COUNTS`` (if set)."""
    target = os.environ.get("CONTINUAL_COUNTS")
    if target:
        with open(target, "a", encoding="utf-8") as file:
            file.write(json.dumps({"what": what, **counts}, sort_keys=True) + "\n")
