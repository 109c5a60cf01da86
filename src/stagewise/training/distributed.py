"""Agreement between processes: every decision that ends or changes a run is taken once and
shared, so that no rank waits forever in a collective that another rank has left.

Thin wrappers over Accelerate's public helpers; with one process each is a no-op.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object

from ..errors import ConfigError, PeerLost

T = TypeVar("T")


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


def all_objects(value: Any) -> list[Any]:
    """Every rank's `value`, index = rank (a collective: every rank calls it at the same point)."""
    if world_size() == 1:
        return [value]
    return list(gather_object([value]))


@functools.cache
def _control_group() -> Any:
    """A gloo group over the same processes, for small host-side agreements: on NCCL a flag in a
    device tensor would cost a device->host sync to read, on gloo it is host memory already.
    Created once, by every rank at the same point (the first agreement of the run)."""
    import torch.distributed as dist

    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def agreed(items: Iterable[T], flags: Callable[[T], list[int]], processes: int) -> Iterator[tuple[T, list[int]]]:
    """Each item with the element-wise max over ranks of `flags(item)` (the same list length on
    every rank; every rank must iterate the same number of items).

    The agreement for an item travels while the one before it is used: one small all-reduce per
    item on the host (gloo), started when the item arrives and read an item later, so neither
    the device nor the host waits for it. `flags` is evaluated when an item arrives, one item
    before it is handed out.
    """
    if processes == 1:
        for item in items:
            yield item, flags(item)
        return
    import torch.distributed as dist

    group = _control_group()
    pending: tuple[T, torch.Tensor, Any] | None = None
    try:
        for item in items:
            t = torch.tensor(flags(item), dtype=torch.int64)
            work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group, async_op=True)
            if pending is not None:
                before, values, done = pending
                pending = None
                done.wait()
                yield before, values.tolist()
            pending = (item, t, work)
        if pending is not None:
            item, values, done = pending
            pending = None
            done.wait()
            yield item, values.tolist()
    finally:
        # A consumer that stops early (every rank at the same item) leaves the next item's
        # all-reduce started on every rank: finish it so the group is clean for the next epoch.
        if pending is not None:
            pending[2].wait()


def max_over_ranks(acc: Accelerator, value: int) -> int:
    """The largest `value` of any rank (a signal number: one rank's signal stops all)."""
    if acc.num_processes == 1:
        return value
    # Accelerate's reduce offers sum and mean only; gather and take the max instead.
    return int(acc.gather(torch.tensor([value], device=acc.device)).max())


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
