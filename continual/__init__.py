"""continual: continual learning with prompt tuning over frozen Hugging Face transformers.

Each task is learned as its own soft prompt (plus a small head and a routing key) in a growing
pool; a selector routes every input to its task's prompt with no task id given.
"""

from .backbone import Backbone
from .data import Task
from .entry import TaskEntry
from .errors import ContinualError, PoolFormatError, PoolLockedError, TaskDataError
from .learner import TrainingConfig
from .metrics import Score
from .pool import Prediction, PromptPool
from .prompt import SoftPrompt
from .selector import (
    GaussianSelector,
    KeySelector,
    OracleSelector,
    PrototypeSelector,
    Selector,
    ViewGaussianSelector,
)

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "ContinualError",
    "GaussianSelector",
    "KeySelector",
    "OracleSelector",
    "PoolFormatError",
    "PoolLockedError",
    "Prediction",
    "PromptPool",
    "PrototypeSelector",
    "Score",
    "Selector",
    "SoftPrompt",
    "Task",
    "TaskDataError",
    "TaskEntry",
    "TrainingConfig",
    "ViewGaussianSelector",
]
