"""The resumable state of a stage (`last/`) and the best weights, written atomically.

Everything is stored as safetensors or as a torch file of plain containers that
`torch.load(weights_only=True)` accepts, so resuming never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, clip
from ..io import existing_dir, replace_dir, write_with
from .stopping import StopTracker

# What a failed write raises: OSError from our own renames and fsyncs, SafetensorError from
# safetensors (not an OSError), RuntimeError from torch.save ("PytorchStreamWriter failed").
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write of `path` (a full disk, no permission) into an error that names it;
    the writers are atomic, so what was there before is still there."""
    try:
        yield
    except WRITE_ERRORS as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else clip(str(exc), 160)
        raise CheckpointError(
            f"cannot write {path} ({reason}); what was saved there before is unchanged: free "
            "space (or fix the folder's permissions), then run again"
        ) from None


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the weights (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    state = model_state(model)
    with writing(path):
        write_with(path, lambda tmp: save_file(state, str(tmp), metadata=metadata or {}))


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    # The legacy form (the default) of the global MT19937 RandomState: numpy's stubs also allow
    # the dict of other bit generators, which np.random's global state never is.
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Resumable:
    """Where a stage stands: the next epoch to run and how many of its batches are done."""

    epoch: int
    batches_done: int
    global_step: int
    tracker: StopTracker
    history_len: int
    world_size: int = 1  # processes that trained it: the sampler's shards depend on it
    grad_accum: int = 1  # its accumulation: with world_size and the batch, its global batch

    def at(self, epoch: int, batches_done: int) -> Resumable:
        """This state at another position (what a checkpoint there records)."""
        return replace(self, epoch=epoch, batches_done=batches_done)


def save_last(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    scaler: Any,
    ema: nn.Module | None,
    where: Resumable,
    rng_ranks: list[dict[str, Any]] | None = None,
) -> None:
    """Replace `folder` (normally RUN/last) with a complete checkpoint. `rng_ranks`: every rank's
    RNG state (distributed.all_objects(rng_state())), index = rank; None: this process's only."""
    weights = model_state(model)
    ema_weights = model_state(ema) if ema is not None else None
    state = {
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": where.epoch,
        "batches_done": where.batches_done,
        "global_step": where.global_step,
        "tracker": where.tracker.as_dict(),
        "history_len": where.history_len,
        "world_size": where.world_size,
        "grad_accum": where.grad_accum,
        # Rank 0's state under "rng" as well: what checkpoints before rng_ranks held.
        "rng": rng_ranks[0] if rng_ranks else rng_state(),
        "rng_ranks": rng_ranks or [rng_state()],
    }

    def build(tmp: Path) -> None:
        save_file(weights, str(tmp / "model.safetensors"))
        if ema_weights is not None:
            save_file(ema_weights, str(tmp / "ema.safetensors"))
        torch.save(state, tmp / "state.pt")

    with writing(folder):
        replace_dir(build, folder)


def load_last(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    scaler: Any,
    ema: nn.Module | None,
    rank: int = 0,
) -> Resumable | None:
    """Restore everything `save_last` wrote; None when there is no checkpoint yet. `rank` picks
    this process's RNG state; a rank the checkpoint has none for (more processes than saved it,
    at an epoch boundary) keeps the RNG its set-up seeded.

    Everything is read before anything is restored, so a damaged file changes nothing.
    """
    found = existing_dir(folder)
    if found is None:
        return None
    weights, ema_weights, state = _read_checkpoint(found, folder, ema is not None)
    try:
        model.load_state_dict(weights)
        if ema is not None and ema_weights is not None:
            ema.load_state_dict(ema_weights)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_ranks") or [state["rng"]]
        if rank < len(per_rank):
            set_rng_state(per_rank[rank])
        return Resumable(epoch=state["epoch"], batches_done=state["batches_done"],
                         global_step=state["global_step"],
                         tracker=StopTracker.from_dict(state["tracker"]),
                         history_len=state["history_len"], world_size=int(state.get("world_size", 1)),
                         grad_accum=int(state.get("grad_accum", 0)))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise _damaged(found / "state.pt", found, folder, exc) from None


def _read_checkpoint(
    found: Path, folder: Path, with_ema: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """The three files of a checkpoint, read; a file that does not load is named in the error."""
    current = found / "model.safetensors"
    try:
        weights = load_file(str(current))
        ema_weights = None
        current = found / "ema.safetensors"
        if with_ema and current.is_file():
            ema_weights = load_file(str(current))
        current = found / "state.pt"
        state = torch.load(current, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"holds a {type(state).__name__}, not a checkpoint")
    except Exception as exc:  # noqa: BLE001 - any failure to read a file means it is damaged
        raise _damaged(current, found, folder, exc) from None
    return weights, ema_weights, state


def _damaged(path: Path, found: Path, folder: Path, exc: BaseException) -> CheckpointError:
    """A checkpoint that cannot be read: which file, and the ways on. The reader's own text is
    not echoed (torch's suggests weights_only=False, which would unpickle arbitrary code)."""
    why = "missing" if isinstance(exc, FileNotFoundError) else "damaged or incomplete"
    old = folder.with_name(f"{folder.name}.old")
    restart = (f"delete {found} to train the stage's epochs again from the start with --resume, "
               "or start a new run with another --out")
    if found != old and old.is_dir():
        restart = (f"{old} holds the checkpoint before it: move it to {folder} to resume from "
                   f"there. Otherwise {restart}")
    return CheckpointError(f"{path} is {why}, so the run cannot resume from {found}. "
                           f"{restart[0].upper()}{restart[1:]}", resumable=False)


def saved_position(folder: Path) -> tuple[int, int] | None:
    """(epoch, batches done) of the checkpoint in `folder`, or None when it holds none that loads."""
    found = existing_dir(folder)
    if found is None:
        return None
    try:
        state = torch.load(found / "state.pt", map_location="cpu", weights_only=True)
        return int(state["epoch"]), int(state["batches_done"])
    except Exception:  # noqa: BLE001 - for a message only: an unreadable checkpoint is none
        return None


def saved_layout(folder: Path) -> tuple[int, int, int] | None:
    """(processes, grad_accum, batches done) of the checkpoint in `folder`, read without loading
    its tensors (mmap); grad_accum 0 where a checkpoint from before it was recorded. None: none."""
    found = existing_dir(folder)
    if found is None:
        return None
    try:
        state = torch.load(found / "state.pt", map_location="cpu", weights_only=True, mmap=True)
        return (int(state.get("world_size", 1)), int(state.get("grad_accum", 0)),
                int(state["batches_done"]))
    except Exception:  # noqa: BLE001 - load_last names what is wrong with it
        return None


def keep_recent(last: Path, kept: Path, step: int, keep: int) -> None:
    """With `keep` > 1, keep `last` (just written and durable) as kept/step-NNNNNNNNN too and
    remove all but the `keep` newest there. Hard links: the copy costs no space (last/ is
    rebuilt in a new folder each time, so the linked files are never rewritten in place);
    a filesystem without hard links gets a copy."""
    if keep <= 1:
        return

    def build(tmp: Path) -> None:
        for f in last.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)

    with writing(kept):
        replace_dir(build, kept / f"step-{step:09d}")
        saved = sorted(p for p in kept.iterdir() if p.name.startswith("step-") and p.is_dir())
        for old in saved[:-keep]:
            # Renamed away first: a reader never sees a half-deleted checkpoint under its name.
            trash = old.with_name(f".{old.name}.trash")
            os.replace(old, trash)
            shutil.rmtree(trash, ignore_errors=True)
        for left in kept.glob(".step-*"):  # what a killed prune or write left
            shutil.rmtree(left, ignore_errors=True)
