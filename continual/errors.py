"""Exception families. Each message names the file, row or field at fault and says what to do."""


class ContinualError(Exception):
    """Base class of every error this library raises on purpose."""


class TaskDataError(ContinualError):
    """A task's data is missing, malformed or unusable (bad file, row, column or label set)."""


class PoolFormatError(ContinualError):
    """A pool directory is missing, corrupt, foreign, or was saved for another backbone."""


class PoolLockedError(ContinualError):
    """Another process holds the pool's lock."""
