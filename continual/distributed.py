"""Data-parallel training across processes: launch detection and the process group.

``torchrun --nproc-per-node N`` and ``accelerate launch`` start N copies of a program and tell
each its place through the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, plus the
rendezvous address). `init` joins the copies into one process group (gloo on the CPU, nccl on
CUDA); `continual.trainer` then trains one task data-parallel and every helper here answers as
for a single process when there is no group: a plain ``python`` run needs none and gets none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist

from .backbone import resolve_device
from .errors import ContinualError


def launched() -> bool:
    """Whether this process is one of several started by torchrun or Accelerate."""
    return _environment_int("WORLD_SIZE", 1) > 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 when not launched)."""
    return _environment_int("LOCAL_RANK", 0)


def rank_device(device: str | torch.device) -> torch.device:
    """The device this process trains on: ``device``, except that an unnumbered CUDA device
    (``cuda`` or ``auto`` on a GPU machine) becomes ``cuda:LOCAL_RANK`` under a launcher, so
    that the processes of one machine use one GPU each."""
    target = resolve_device(device)
    if launched() and target.type == "cuda" and target.index is None:
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise ContinualError(
                f"process with LOCAL_RANK {index} has no GPU of its own: this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        target = torch.device("cuda", index)
    return target


def init(device: str | torch.device = "cpu") -> bool:
    """Join the launcher's process group if this process was launched as one of several.

    Does nothing in a plain process, or when the group exists already (an ``Accelerator`` or
    the caller made it). The backend is nccl when ``device`` is a CUDA device, gloo otherwise.
    Returns whether a group of more than one process is active afterwards.
    """
    if active() or not launched():
        return active()
    if not dist.is_available():
        raise ContinualError(
            "started by a launcher (WORLD_SIZE > 1) but this PyTorch build has no "
            "torch.distributed; run a single process"
        )
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ContinualError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
            "is not set; start the processes with torchrun or accelerate launch"
        )
    target = torch.device(device)
    if target.type == "cuda":
        if (target.index or 0) != local_rank():
            # Every process on one GPU would make nccl fail (or share that GPU): the backbone
            # must be loaded on this process's own one.
            raise ContinualError(
                f"process {local_rank()} on this machine holds its backbone on {target}; load "
                "it with Backbone.load(..., device=continual.distributed.rank_device('cuda')) "
                f"so that it goes to cuda:{local_rank()}"
            )
        torch.cuda.set_device(target)  # nccl binds each process to its own GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return active()


@contextlib.contextmanager
def process_group(device: str) -> Iterator[str]:
    """Inside: this process in the launcher's process group, if it was launched as one of
    several (`init`), and the device it works on (`rank_device`). A group made here is left
    on the way out; one that existed before is kept."""
    if not launched():
        yield device
        return
    device = str(rank_device(device))
    made = not active() and init(device)
    try:
        yield device
    finally:
        if made:
            teardown()


def active() -> bool:
    """Whether a process group of more than one process is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0: the one that prints progress and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process of the group gets here (no-op without a group)."""
    if active():
        dist.barrier()


def teardown() -> None:
    """Leave the process group if one was initialised (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: Iterable[float], device: torch.device) -> list[float]:
    """Sums over every process of a few numbers (counts, losses); the numbers themselves
    without a group. ``device`` is where the backend reduces: the CPU for gloo, the GPU
    for nccl."""
    numbers = [float(value) for value in values]
    if not active():
        return numbers
    total = torch.tensor(numbers, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return [float(value) for value in total.tolist()]


def check_same(tensors: Iterable[torch.Tensor], what: str) -> None:
    """Raise on every rank if any rank's ``tensors`` differ from rank 0's by a single bit.

    Data-parallel replicas start from the same weights and apply the same averaged gradients,
    so they stay identical; a difference means they saw different data or configuration, and
    a pool written by rank 0 would then not be what the other ranks trained.
    """
    if not active():
        return
    flat = torch.cat([tensor.detach().reshape(-1).float() for tensor in tensors])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    gap = (flat - reference).abs().max()
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    if float(gap) != 0.0:
        raise ContinualError(
            f"the {world_size()} processes ended with different {what} (largest difference "
            f"{float(gap):.3g}); check that every process reads the same data and options"
        )


def digest(tensors: Iterable[torch.Tensor]) -> str:
    """A short sha256 of tensors' values, to compare what different processes hold."""
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ContinualError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None
