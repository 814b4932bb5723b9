"""Hypothesis properties that count the examples they ran.

A module's last test compares the counts with each property's ``max_examples``, so the figures
the README quotes (how many generated inputs a run checks) are measured, not assumed.
"""
from __future__ import annotations

import functools
import json
from collections import Counter

import pytest
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
                given(*strategies, **named)(counted))

        return decorate

    def check_every_property_ran(self, capsys, module: str, counted: str) -> None:
        """Assert every property that ran reached its max_examples; print how many ``counted`` ran.

        Call it from a module's last test; skips when no property of the module ran.
        """
        ran = {name: self.runs[name] for name in self.expected if self.runs[name]}
        if not ran:
            pytest.skip("no property ran in this session")
        short = {name: (count, self.expected[name]) for name, count in ran.items()
                 if count < self.expected[name]}
        assert not short, f"properties that ran fewer examples than asked: {short}"
        with capsys.disabled():
            print(f"\n{module}: {sum(ran.values())} {counted} " + json.dumps(ran, sort_keys=True))
