"""Agreement between processes: every decision that ends or changes a run is taken once and
shared, so that no rank waits forever in a collective that another rank has left.

Thin wrappers over Accelerate's public helpers; with one process each is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list

from ..errors import ConfigError, PeerLost


def cpu_only() -> bool:
    """Whether Accelerate must be told to use the CPU: several processes (torchrun or accelerate
    launch set WORLD_SIZE) and no CUDA. Without `cpu=True` it would not pick gloo on such a
    machine; a single process keeps Accelerate's own choice (MPS on a Mac)."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def state() -> PartialState:
    """The process group, started from the launcher's environment on first use."""
    return PartialState(cpu=cpu_only())


def world_size() -> int:
    return state().num_processes


def is_main_process() -> bool:
    """Rank 0 (of all nodes): the one process that writes run-folder files."""
    return state().is_main_process


def single_process(tool: str) -> None:
    """Refuse to run `tool` under a multi-process launcher (it would run N times, racing)."""
    if world_size() > 1:
        raise ConfigError(f"{tool} runs in one process; start it without torchrun/accelerate launch")


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes)."""
    st = state()
    return st.process_index, st.num_processes


def wait_for_everyone() -> None:
    state().wait_for_everyone()


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (a stop reason, a path): rank 0 decides, all follow."""
    if world_size() == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def max_over_ranks(acc: Accelerator, value: int) -> int:
    """The largest `value` of any rank (a signal number: one rank's signal stops all)."""
    if acc.num_processes == 1:
        return value
    # Accelerate's reduce offers sum and mean only; gather and take the max instead.
    return int(acc.gather(torch.tensor([value], device=acc.device)).max())


def min_over_ranks(acc: Accelerator, value: int) -> int:
    """The smallest `value` of any rank (1 only if every rank agrees)."""
    return -max_over_ranks(acc, -value)


def sum_over_ranks(acc: Accelerator, values: list[float]) -> list[float]:
    """Element-wise sums across ranks (loss sums, counts): metrics of the whole data."""
    if acc.num_processes == 1:
        return values
    total = acc.reduce(torch.tensor(values, dtype=torch.float64, device=acc.device), reduction="sum")
    return [float(v) for v in total]


# What gloo and NCCL say when the process at the other end of a collective is gone.
# (torch raises DistBackendError for most of them; older builds a plain RuntimeError.)
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe",
              "connection refused", "nccl communicator was aborted", "remote process exited",
              "socket timeout")


@contextlib.contextmanager
def peer_failures(run_dir: object) -> Iterator[None]:
    """Turn a collective that failed because another rank died into PeerLost, which says so and
    how to resume, instead of the backend's traceback. With one process: nothing to catch."""
    try:
        yield
    except RuntimeError as exc:
        rank, world = rank_and_world()
        text = str(exc).lower()
        if world < 2 or not (isinstance(exc, torch.distributed.DistError)
                             or any(mark in text for mark in _PEER_GONE)):
            raise
        who = f"rank {1 - rank}" if world == 2 else "another rank"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise PeerLost(
            f"rank {rank}: {who} of this {world}-process run died or lost its connection during a "
            f"collective ({type(exc).__name__}: {first}); this process stops too. {run_dir}/last "
            f"holds the last checkpoint: start all {world} processes again with --resume") from None
