"""Bridges between `continual` and other continual-learning libraries.

* `continual.integrations.avalanche`: Avalanche (``avalanche-lib`` 0.6.0) benchmarks built from
  our tasks and back, a `PromptPoolStrategy` that runs a `continual.PromptPool` inside
  Avalanche's training and evaluation loops, and `AvalancheMethod`, Avalanche's EWC, LwF, Replay
  and Naive strategies behind our benchmark's `Method` protocol.

The submodules are not imported here: importing Avalanche takes seconds, and only code that
uses it should pay for that.
"""
